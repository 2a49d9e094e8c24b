"""Agent programs and the SDK they are written against."""

from llmos.agents.sdk import Sys, SyscallError

__all__ = ["Sys", "SyscallError"]
