"""Hostile: tries to reach the machine's PostgreSQL, the test's listener and a public address,
over TCP, UDP and a Unix socket; reports each attempt as JSON in its output (report.json)."""

import json
import socket

with open("/data/inputs/params.json", encoding="utf-8") as file:
    listener_port = json.load(file)["port"]
attempts: dict[str, str] = {}
targets: list[tuple[str, int, int, tuple[str, int] | str]] = [
    ("postgres", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 5432)),
    ("listener", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", listener_port)),
    ("public", socket.AF_INET, socket.SOCK_STREAM, ("1.1.1.1", 443)),
    ("udp", socket.AF_INET, socket.SOCK_DGRAM, ("8.8.8.8", 53)),
    ("ipv6", socket.AF_INET6, socket.SOCK_STREAM, ("::1", listener_port)),
    ("unix", socket.AF_UNIX, socket.SOCK_STREAM, "/run/postgresql/.s.PGSQL.5432"),
]
for name, family, kind, address in targets:
    try:
        with socket.socket(family, kind) as connection:
            connection.settimeout(2)
            connection.connect(address)
            connection.sendall(b"leak")
        attempts[name] = "connected"
    except OSError as error:
        attempts[name] = f"errno {error.errno}"
try:
    socket.socketpair()
    attempts["socketpair"] = "made"
except OSError as error:
    attempts["socketpair"] = f"errno {error.errno}"
with open("/data/output/report.json", "w", encoding="utf-8") as report_file:
    json.dump(attempts, report_file)
