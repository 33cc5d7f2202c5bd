"""Where the files the code reads ship: the schemas folder (migrations, policy lists, contract
templates, event schemas). Imports nothing, so offline commands can find them cheaply."""

from __future__ import annotations

from pathlib import Path

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
