"""Remembers one message, says so in its log, then sleeps for an hour (for the shell's mem)."""


async def main(sys, args):
    await sys.mem.store(" ".join(args) or "The meeting moved to Tuesday.")
    await sys.log("stored")
    await sys.sleep(3600)
