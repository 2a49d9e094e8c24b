async def main(sys, args):
    await sys.log("about to fail")
    raise RuntimeError("boom: " + " ".join(args))
