"""llmos: an agent runtime built on operating-system ideas."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `llmos.connect` (the remote SDK) is loaded on first use: importing llmos stays cheap.
    if name == "connect":
        from llmos.agents.remote import connect

        return connect
    raise AttributeError(f"module 'llmos' has no attribute {name!r}")
