"""Hostile: loops forever on one core."""

while True:
    pass
