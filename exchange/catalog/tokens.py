"""Search tokens for Chinese and English text: pure, the same for documents and queries.

Chinese has no spaces and pg_trgm only helps from three characters, yet two-character words
(气象, 医疗) are the common query. So text is split into runs: a run of Han (or kana / hangul)
characters gives its overlapping bigrams (城市气象 → 城市, 市气, 气象), a run of letters and
digits gives the lower-cased word. A product's tokens are stored in an array with a GIN index;
a query matches when the product has all of its tokens, so 气象 finds 城市气象观测数据, and a
longer Chinese phrase matches where its bigrams all occur (a close, index-friendly stand-in for
substring search). English words also match their simple plural (dataset ~ datasets).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_RUN = re.compile(rf"[{_CJK}]+|[0-9a-z]+")
_IS_CJK = re.compile(rf"[{_CJK}]")
MAX_TOKEN = 40


def _word(word: str) -> str:
    """Lower-case word, with a trailing plural 's' folded (not for short words or 'ss')."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """Tokens of ``text`` in order of appearance, without duplicates."""
    return list(_tokens(text))


@lru_cache(maxsize=65_536)
def _tokens(text: str) -> tuple[str, ...]:
    normal = unicodedata.normalize("NFKC", text).lower()
    seen: dict[str, None] = {}
    for run in _RUN.findall(normal):
        if _IS_CJK.match(run):
            if len(run) == 1:
                seen[run] = None
            for i in range(len(run) - 1):
                seen[run[i : i + 2]] = None
        else:
            seen[_word(run)[:MAX_TOKEN]] = None
    return tuple(seen)


def document_tokens(texts: Iterable[str]) -> list[str]:
    """Tokens of every searchable text of a product (name, summary, tags, field names)."""
    seen: dict[str, None] = {}
    for text in texts:
        for token in _tokens(text):
            seen[token] = None
    return list(seen)
