"""Hostile: makes its result a link to an input file (a hard link is tried first)."""

import os
import sys

try:
    os.link("/data/inputs/sales.csv", "/data/output/result.json")
    print("hard link made", file=sys.stderr)
except OSError as error:
    print(f"hard link refused: errno {error.errno}", file=sys.stderr)
    os.symlink("/data/inputs/sales.csv", "/data/output/result.json")
