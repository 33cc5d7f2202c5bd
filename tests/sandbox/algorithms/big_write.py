"""Hostile: writes 100 MiB into its output folder."""

chunk = b"x" * 2**20
with open("/data/output/result.json", "wb") as file:
    for _ in range(100):
        file.write(chunk)
