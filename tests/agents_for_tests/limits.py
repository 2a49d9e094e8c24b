"""Returns the quota it was given."""


async def main(sys, args):
    return (await sys.proc.limits()).model_dump()
