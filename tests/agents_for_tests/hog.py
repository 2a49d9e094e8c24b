"""Allocates memory 16 MB at a time, touching every page, up to `args[0]` MB (default 8 GB)."""


async def main(sys, args):
    limit_mb = int(args[0]) if args else 8192
    chunks = []
    while len(chunks) * 16 < limit_mb:
        chunks.append(bytearray(16 * 2**20))  # zero-filled: every page touched
    return f"allocated {len(chunks) * 16} MB"
