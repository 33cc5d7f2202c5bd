"""Hostile: groups by the customer's identifier, so each group is one person."""

import csv
import json
from collections import Counter

with open("/data/inputs/sales.csv", newline="", encoding="utf-8") as file:
    counts = Counter(row["customer_id"] for row in csv.DictReader(file))
with open("/data/output/result.json", "w", encoding="utf-8") as file:
    json.dump({"columns": ["customer_id", "count"], "rows": sorted(counts.items())}, file)
