"""The standard contract templates: every one renders with its articles numbered 1..n, and a
published version never changes (a contract names its template's version, and its digest covers
the text rendered from it)."""

from __future__ import annotations

import hashlib
import re
import tomllib

import pytest
import rfc8785

from contracts.agreements.templates import (
    PLACEHOLDERS,
    SUPERSEDED,
    TEMPLATES_DIR,
    TemplateError,
    _load,
    render_text,
    template_versions,
    templates,
)


def _rendered(template_id: str) -> str:
    template = templates()[template_id]
    values = {name: f"<{name}>" for name in PLACEHOLDERS}
    document = {
        "contract_id": "00000000-0000-0000-0000-000000000000",
        "parties": {
            "provider": {"name": "提供方", "uscc": "91350100M000100Y43"},
            "recipient": {"name": "接收方", "uscc": "91350100M000100Y43"},
        },
        "exchange": {"code": "DX", "name": "dataex 数据交易所"},
        "clauses": template.render_clauses(values),
        "digest": "sha256:" + "0" * 64,
    }
    return render_text(template, document)


def test_every_template_numbers_its_articles_1_to_n():
    """Issue 18: data-provision 2025.1 went 1, 2, 3, 5, …: no 第4条 in any contract."""
    ids = set(templates())
    assert ids == {
        "data-provision", "entrusted-processing", "joint-development", "intermediary-service",
    }  # fmt: skip
    for template_id in sorted(ids):
        text = _rendered(template_id)
        articles = [int(n) for n in re.findall(r"^第(\d+)条 ", text, flags=re.MULTILINE)]
        assert articles == list(range(1, len(articles) + 1)), (template_id, articles)
        assert len(articles) == len(templates()[template_id].clauses)


# SHA-256 of the RFC 8785 canonical JSON of each published version's parsed TOML (comments
# aside): a contract names its template's version and its digest covers the text rendered from
# it, so a published version is never edited. A correction is a new version, added here.
PUBLISHED = {
    "data-provision.2025.1.toml": "217370d47fadd01cb384f54411da575df950b04e31d1f509ade9e24ed6dfbc46",
    "data-provision.2025.2.toml": "743335595b68f32b17fc56f0df81e9c53aa1ac39a407a782bc612ccb1250afbb",
    "entrusted-processing.2025.1.toml": "73ca39da5c66038c523aee9c792656e8451409e7644f994898a1f9425b577675",
    "intermediary-service.2025.1.toml": "8b9c9c13fb3176b27e4eeefa2b41f791db769cf64f849e35a0d8873bc166dd16",
    "joint-development.2025.1.toml": "077a3c53410bd96587c7266f361a13fc1e766de4ae1fd317d2948ce2cd2fff35",
}


def test_a_published_template_version_never_changes():
    found = {
        path.name: hashlib.sha256(rfc8785.dumps(tomllib.loads(path.read_text("utf-8")))).hexdigest()
        for path in sorted(TEMPLATES_DIR.glob("*.toml"))
    }
    assert found == PUBLISHED


def test_the_misnumbered_version_stays_readable_and_new_contracts_use_its_correction():
    old = template_versions()["data-provision", "2025.1"]
    assert [c.article for c in old.clauses] == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    new = templates()["data-provision"]
    assert (new.id, new.version) == ("data-provision", "2025.2")
    assert [c.article for c in new.clauses] == list(range(1, 11))
    # The same clauses word for word: only the numbers changed.
    assert [(c.title_zh, c.text.template) for c in new.clauses] == [
        (c.title_zh, c.text.template) for c in old.clauses
    ]
    for (template_id, version), corrected in SUPERSEDED.items():
        assert templates()[template_id].version == corrected != version


def test_a_template_that_skips_an_article_does_not_load(tmp_path):
    path = tmp_path / "x.1.toml"
    path.write_text(
        'id = "x"\nversion = "1"\ntitle_zh = "x"\ntitle_en = "x"\n'
        '[[clauses]]\narticle = 1\ntitle_zh = "a"\ntext_zh = "a"\n'
        '[[clauses]]\narticle = 3\ntitle_zh = "b"\ntext_zh = "b"\n',
        encoding="utf-8",
    )
    with pytest.raises(TemplateError, match=r"numbered 1\.\.n"):
        _load(path)
