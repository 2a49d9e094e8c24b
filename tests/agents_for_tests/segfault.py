"""Reads address 0: the worker dies of SIGSEGV."""

import ctypes


async def main(sys, args):
    await sys.log("about to read address 0")
    return ctypes.string_at(0)
