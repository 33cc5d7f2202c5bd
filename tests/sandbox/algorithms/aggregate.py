"""A well-behaved algorithm: the count and mean amount of sales by the column the buyer names."""

import csv
import json
import statistics

with open("/data/inputs/params.json", encoding="utf-8") as file:
    by = json.load(file)["group_by"]
groups: dict[str, list[float]] = {}
with open("/data/inputs/sales.csv", newline="", encoding="utf-8") as file:
    for row in csv.DictReader(file):
        groups.setdefault(row[by], []).append(float(row["amount"]))
rows = [[key, len(amounts), statistics.fmean(amounts)] for key, amounts in sorted(groups.items())]
with open("/data/output/result.json", "w", encoding="utf-8") as file:
    json.dump({"columns": [by, "count", "mean_amount"], "rows": rows}, file)
