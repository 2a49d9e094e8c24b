"""Runs the tool loop with a 'model' that never stops calling calc: its quota must stop it."""

import json

from llmos.agents.tooluse import run_tools


async def always_calc(messages, max_tokens, **sampling):
    return json.dumps({"tool": "calc", "arguments": {"expression": "1 + 1"}})


async def main(sys, args):
    await run_tools(sys, "count forever", ["calc"], max_steps=1_000_000, chat=always_calc)
    return "stopped by itself"
