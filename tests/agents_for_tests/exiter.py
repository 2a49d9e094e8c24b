async def main(sys, args):
    try:
        await sys.proc.exit(3, {"answer": 42})
    except Exception:  # proc.exit cannot be swallowed by `except Exception`
        return "swallowed"
