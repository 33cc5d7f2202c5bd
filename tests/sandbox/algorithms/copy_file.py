"""Hostile: copies the input file itself into the output folder, beside a harmless result."""

import json
import shutil

shutil.copyfile("/data/inputs/sales.csv", "/data/output/sales.csv")
with open("/data/output/result.json", "w", encoding="utf-8") as file:
    json.dump({"columns": ["count"], "rows": [[144]]}, file)
