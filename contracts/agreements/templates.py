"""Contract templates (TOML under schemas/contracts) and rendering to readable Chinese text.

Placeholders are ``$name`` (string.Template): substitution of plain strings only, nothing in a
template is evaluated. A template that names an unknown placeholder, or that does not number its
articles 1..n, fails to load.

Each file is one version (``<id>.<version>.toml``) and a published version is never edited: a
contract names the version it was rendered from, and its digest covers that text. A correction
is a new version beside the old one; new contracts are rendered from the newest version of each
template (`templates`), and every version stays readable (`template_versions`).
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from exchange.platform.db import SCHEMAS_DIR

TEMPLATES_DIR = SCHEMAS_DIR / "contracts"
DEFAULT_TEMPLATE = "data-provision"
PLACEHOLDERS = frozenset({
    "product_name", "product_code", "revision", "revision_digest", "scale", "source", "rights",
    "purpose", "territory", "term_days", "redistribution", "delivery", "price_yuan", "price_fen",
    "pricing", "quantity", "fee_fen", "acceptance_days", "policy_summary", "exchange_name",
})  # fmt: skip


# Published versions that break a rule the loader now enforces, kept byte for byte because
# contracts were made from them, each with the version that corrects it. Never the newest.
SUPERSEDED: dict[tuple[str, str], str] = {
    # numbered its articles 1, 2, 3, 5, …, 11 (issue 18)
    ("data-provision", "2025.1"): "2025.2",
}


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Clause:
    article: int
    title_zh: str
    text: string.Template


@dataclass(frozen=True, slots=True)
class ContractTemplate:
    id: str
    version: str
    title_zh: str
    title_en: str
    clauses: tuple[Clause, ...]

    def render_clauses(self, values: dict[str, str]) -> list[dict[str, Any]]:
        return [
            {"article": c.article, "title_zh": c.title_zh, "text_zh": c.text.substitute(values)}
            for c in self.clauses
        ]


def _load(path: Path) -> ContractTemplate:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    clauses = []
    for raw in data["clauses"]:
        template = string.Template(raw["text_zh"])
        unknown = set(template.get_identifiers()) - PLACEHOLDERS
        if unknown or not template.is_valid():
            raise TemplateError(f"{path.name}: article {raw['article']}: unknown {sorted(unknown)}")
        clauses.append(Clause(int(raw["article"]), str(raw["title_zh"]), template))
    template_id, version = str(data["id"]), str(data["version"])
    if path.name != f"{template_id}.{version}.toml":
        raise TemplateError(f"{path.name}: must be named {template_id}.{version}.toml")
    articles = [c.article for c in clauses]
    if articles != list(range(1, len(clauses) + 1)) and (template_id, version) not in SUPERSEDED:
        raise TemplateError(f"{path.name}: articles must be numbered 1..n, not {articles}")
    return ContractTemplate(
        id=template_id, version=version, title_zh=data["title_zh"],
        title_en=data["title_en"], clauses=tuple(clauses),
    )  # fmt: skip


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@cache
def template_versions() -> dict[tuple[str, str], ContractTemplate]:
    """Every version of every template, by (id, version)."""
    found = {}
    for path in sorted(TEMPLATES_DIR.glob("*.toml")):
        template = _load(path)
        found[template.id, template.version] = template
    return found


@cache
def templates() -> dict[str, ContractTemplate]:
    """The newest version of each template id: what new contracts are rendered from."""
    versions = template_versions()
    found: dict[str, ContractTemplate] = {}
    for template_id, version in sorted(versions, key=lambda k: (k[0], _version_key(k[1]))):
        found[template_id] = versions[template_id, version]
    for template in found.values():
        if (template.id, template.version) in SUPERSEDED:
            raise TemplateError(f"{template.id} {template.version} is superseded, not current")
    return found


def render_text(template: ContractTemplate, document: dict[str, Any]) -> str:
    """The contract as readable Chinese text, from its canonical document."""
    lines = [template.title_zh, f"合同编号:{document['contract_id']}", ""]
    parties = document["parties"]
    for role, label in (("provider", "提供方"), ("recipient", "接收方")):
        party = parties[role]
        lines.append(f"{label}:{party['name']}(统一社会信用代码 {party['uscc']})")
    lines.append(f"交易场所:{document['exchange']['name']}({document['exchange']['code']})")
    if origin := document.get("origin_exchange"):
        lines.append(f"挂牌场所(互认):{origin['name']}({origin['code']})")
    lines.append("")
    for clause in document["clauses"]:
        lines.append(f"第{clause['article']}条 {clause['title_zh']}")
        lines.append(clause["text_zh"])
    lines += ["", f"合同摘要(SHA-256,RFC 8785):{document.get('digest', '见签名')}"]
    return "\n".join(lines)
