"""Hostile: copies the input rows out as a "table", each row claiming a group of 10."""

import csv
import json

with open("/data/inputs/sales.csv", newline="", encoding="utf-8") as file:
    rows = list(csv.DictReader(file))
columns = ["region", "month", "amount", "age"]
table = {"columns": [*columns, "count"], "rows": [[r[c] for c in columns] + [10] for r in rows]}
with open("/data/output/result.json", "w", encoding="utf-8") as file:
    json.dump(table, file)
