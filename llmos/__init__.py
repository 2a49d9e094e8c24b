"""llmos: an agent runtime built on operating-system ideas."""

__version__ = "0.1.0"
