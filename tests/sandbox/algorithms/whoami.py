"""Reports who it runs as, inside and (through the user namespace's map) outside."""

import json
import os

with open("/proc/self/uid_map", encoding="ascii") as file:
    uid_map = file.read().split()
with open("/data/output/report.json", "w", encoding="utf-8") as report_file:
    json.dump(
        {
            "uid": os.getuid(),
            "gid": os.getgid(),
            "groups": os.getgroups(),
            "uid_map": uid_map,
            "hostname": os.uname().nodename,
            "environ": dict(os.environ),
            "cwd": os.getcwd(),
        },
        report_file,
    )
