"""A small MCP server (stdio), written with the official SDK, that the MCP tests mount."""

from __future__ import annotations

import os
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("llmos-test-fixture")
NOTES: dict[str, str] = {}


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def remember(key: str, value: str) -> str:
    """Store a note under a key (state lives in the server process)."""
    NOTES[key] = value
    return f"stored {key}"


@server.tool()
def recall(key: str) -> str:
    """The note stored under a key."""
    if key not in NOTES:
        raise ToolError(f"no note named {key}")
    return NOTES[key]


@server.tool()
def cwd() -> str:
    """The server's working directory."""
    return os.getcwd()


@server.tool()
def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    time.sleep(seconds)
    return "done"


@server.tool()
def crash() -> str:
    """Ends the server process abruptly."""
    os._exit(3)


if __name__ == "__main__":
    server.run("stdio")
