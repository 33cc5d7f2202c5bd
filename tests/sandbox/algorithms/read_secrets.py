"""Hostile: tries to read what is not its own; reports, as JSON in its output (report.json), what it could read."""

import json
import os

with open("/data/inputs/params.json", encoding="utf-8") as file:
    paths = json.load(file)["paths"]
report: dict[str, str] = {}
for path in [
    "/etc/shadow",
    "/etc/passwd",
    "/proc/1/environ",
    "/proc/self/environ",
    "/root/.bashrc",
    "/sys/kernel/notes",
    *paths,
]:
    try:
        with open(path, "rb") as file:
            report[path] = "read: " + file.read(4096).decode("utf-8", "replace")
    except OSError as error:
        report[path] = f"errno {error.errno}"
for folder in ["/", "/data", "/data/inputs", "/proc"]:
    try:
        report[f"ls {folder}"] = " ".join(sorted(os.listdir(folder)))
    except OSError as error:
        report[f"ls {folder}"] = f"errno {error.errno}"
with open("/data/output/report.json", "w", encoding="utf-8") as report_file:
    json.dump(report, report_file)
