"""Hostile: never ends, using no CPU: only the wall clock stops it."""

import time

while True:
    time.sleep(60)
