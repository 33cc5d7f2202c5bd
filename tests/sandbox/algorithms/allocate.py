"""Hostile: asks for 2 GiB of memory and touches it."""

block = bytearray(2 * 2**30)
block[::4096] = b"x" * len(block[::4096])
