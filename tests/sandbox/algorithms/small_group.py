"""Hostile: honest counts, but grouped so finely (region and age) that groups are small."""

import csv
import json
from collections import Counter

with open("/data/inputs/sales.csv", newline="", encoding="utf-8") as file:
    counts = Counter((row["region"], row["age"]) for row in csv.DictReader(file))
rows = [[region, age, n] for (region, age), n in sorted(counts.items())]
with open("/data/output/result.json", "w", encoding="utf-8") as file:
    json.dump({"columns": ["region", "age", "count"], "rows": rows}, file)
