"""The console's message catalogues: every label a page shows comes from here, never from a
literal in a template (a test holds templates to that).

``messages/<language>/<area>.json`` maps keys (``area.what``) to text with optional
``{name}`` fields. Chinese (``zh``) is the default; English (``en``) is the switch. Both
catalogues must hold the same keys (checked when they load, and by a test).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

Language = Literal["zh", "en"]
LANGUAGES: Final[tuple[Language, ...]] = ("zh", "en")
DEFAULT: Final[Language] = "zh"
MESSAGES_DIR: Final = Path(__file__).parent / "messages"


class CatalogueError(RuntimeError):
    """The catalogues disagree (a key in one language only, a duplicate key)."""


@functools.cache
def catalogues() -> Mapping[Language, Mapping[str, str]]:
    found: dict[Language, dict[str, str]] = {}
    for language in LANGUAGES:
        merged: dict[str, str] = {}
        for path in sorted((MESSAGES_DIR / language).glob("*.json")):
            for key, text in json.loads(path.read_text(encoding="utf-8")).items():
                if key in merged:
                    raise CatalogueError(f"{language}: key {key!r} twice ({path.name})")
                merged[key] = text
        found[language] = merged
    first, *others = LANGUAGES
    for other in others:
        missing = set(found[first]) ^ set(found[other])
        if missing:
            raise CatalogueError(
                f"keys in one of {first}/{other} only: {', '.join(sorted(missing))}"
            )
    return found


def language_of(value: str | None) -> Language:
    return "en" if value == "en" else DEFAULT


class Translator:
    """``t("queue.title")`` or ``t("case.progress", n=1, of=2)`` in one language."""

    def __init__(self, language: Language) -> None:
        self.language = language
        self._messages = catalogues()[language]

    def __call__(self, key: str, **fields: object) -> str:
        text = self._messages.get(key)
        if text is None:
            raise KeyError(f"no message {key!r} in the {self.language} catalogue")
        return text.format(**fields) if fields else text

    def has(self, key: str) -> bool:
        return key in self._messages

    def pick(self, zh: str, en: str) -> str:
        """Of a bilingual pair the data carries (a rule's title, its explanation)."""
        return zh if self.language == "zh" else en
