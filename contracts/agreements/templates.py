"""Contract templates (TOML under schemas/contracts) and rendering to readable Chinese text.

Placeholders are ``$name`` (string.Template): substitution of plain strings only, nothing in a
template is evaluated. A template that names an unknown placeholder fails to load.
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
    return ContractTemplate(
        id=data["id"], version=data["version"], title_zh=data["title_zh"],
        title_en=data["title_en"], clauses=tuple(clauses),
    )  # fmt: skip


@cache
def templates() -> dict[str, ContractTemplate]:
    """The newest version of each template id."""
    found: dict[str, ContractTemplate] = {}
    for path in sorted(TEMPLATES_DIR.glob("*.toml")):
        template = _load(path)
        found[template.id] = template
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
