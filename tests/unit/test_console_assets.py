"""The console's assets: the vendored htmx matches its integrity hash, the two catalogues hold
the same keys, every key a template or page asks for exists, and templates carry no words of
their own (every label comes from a catalogue)."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from exchange.console.i18n import LANGUAGES, Translator, catalogues
from exchange.console.web import HTMX_INTEGRITY, NAV, STATIC_DIR, TEMPLATES_DIR

CONSOLE = TEMPLATES_DIR.parent
TEMPLATES = sorted(TEMPLATES_DIR.glob("*.html"))
# Jinja's own syntax, removed before looking for words.
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_WORD = re.compile(r"[A-Za-z]{2,}|[\u3400-\u9fff]")
_TEXT_ATTRIBUTES = {"title", "aria-label", "placeholder", "alt", "summary"}


def test_the_vendored_htmx_matches_its_integrity_hash():
    algorithm, _, expected = HTMX_INTEGRITY.partition("-")
    data = (STATIC_DIR / "htmx.min.js").read_bytes()
    assert algorithm == "sha384"
    assert base64.b64encode(hashlib.sha384(data).digest()).decode() == expected
    assert (STATIC_DIR / "htmx.LICENSE").read_text().startswith("Zero-Clause BSD")


def test_both_catalogues_hold_the_same_keys_and_fields():
    zh, en = (catalogues()[language] for language in LANGUAGES)
    assert set(zh) == set(en)
    fields = re.compile(r"\{(\w+)\}")
    for key in zh:
        assert sorted(fields.findall(zh[key])) == sorted(fields.findall(en[key])), key
        assert zh[key].strip() and en[key].strip(), key


def _keys_used() -> set[str]:
    used: set[str] = set()
    sources = [*TEMPLATES, *CONSOLE.glob("*.py")]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        used.update(re.findall(r"""\bt\(\s*["']([a-z_]+\.[a-z0-9_.]+)["']""", text))
    return used


def test_every_message_a_page_asks_for_exists():
    used = _keys_used() | {key for key, _ in NAV}
    assert len(used) > 50
    for language in LANGUAGES:
        translate = Translator(language)
        keys = catalogues()[language]
        missing = sorted(
            key
            for key in used
            if not translate.has(key)
            # a prefix completed at run time ("kind." ~ case.kind): some key must complete it
            and not (key.endswith(("_", ".")) and any(k.startswith(key) for k in keys))
        )
        assert not missing, f"{language}: {missing}"


class _Words(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("code", "script", "style"):
            self._skip += 1
        shown = set(_TEXT_ATTRIBUTES)
        if tag == "input" and dict(attrs).get("type") in ("submit", "button", "reset"):
            shown.add("value")  # a button's label
        for name, value in attrs:
            if name in shown and value and _WORD.search(value):
                self.found.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("code", "script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and _WORD.search(data):
            self.found.append(data.strip())


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_templates_carry_no_words_of_their_own(template: Path):
    source = _JINJA.sub(" ", template.read_text(encoding="utf-8"))
    source = re.sub(r"<!doctype html>", "", source, flags=re.I)
    words = _Words()
    words.feed(source)
    assert words.found == [], f"{template.name}: put these in the message catalogues"


def test_the_word_finder_finds_a_literal():
    words = _Words()
    words.feed('<p>批准</p><button title="Approve">{{ x }}</button><code>CAU-04</code>')
    assert words.found == ["批准", "<button title='Approve'>"]
