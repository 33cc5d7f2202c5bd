"""The README's *Integrating* section held to the code: its signing example imports only
`cryptography` and the standard library, its product-code check is the exchange's, and every
operation it names is a route. (tests/integration/test_readme_integrating.py runs the signing
example against a real API process.)"""

from __future__ import annotations

import ast
import random
import re
import sys
from typing import Any

from litestar.routes import HTTPRoute

from exchange.app import create_app
from exchange.listings.lifecycle import product_code, product_code_is_valid
from exchange.platform.settings import Settings
from tests.kit.processes import ROOT


def integrating() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Integrating\n")
    return text[start : text.index("\n## ", start + 1)]


def python_blocks() -> list[str]:
    blocks = re.findall(r"^```python\n(.*?)^```$", integrating(), flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 2, "the signing example and the product-code check"
    return blocks


def test_the_signing_example_uses_only_cryptography_and_the_standard_library():
    tree = ast.parse(python_blocks()[0])
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.module is not None and node.level == 0
            modules.add(node.module.split(".")[0])
    assert "cryptography" in modules
    assert modules - {"cryptography"} <= sys.stdlib_module_names, modules


def test_the_product_code_check_is_the_exchanges():
    namespace: dict[str, Any] = {}
    exec(python_blocks()[1], namespace)  # noqa: S102 - the README's own code, asserts included
    check_character, is_valid = namespace["check_character"], namespace["is_valid"]
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    rng = random.Random(18)
    for _ in range(2000):
        code = product_code(
            rng.choice(["DX", "SHDX", "SZDX", "BJ1"]), rng.randint(2020, 2099),
            rng.randint(0, 9_999_999),
        )  # fmt: skip
        assert check_character(code[:-1]) == code[-1] and is_valid(code)
        # Every single mistyped character is caught, by both.
        i = rng.choice([n for n, c in enumerate(code) if c != "-"])
        wrong = code[:i] + rng.choice(alphabet.replace(code[i], "")) + code[i + 1 :]
        assert not is_valid(wrong) and not product_code_is_valid(wrong)
    assert not is_valid("dx-2026-000001y") and not product_code_is_valid("dx-2026-000001y")
    assert not is_valid("Y") and not product_code_is_valid("Y")


def test_every_operation_the_section_names_is_a_route():
    routes = set()
    for route in create_app(Settings()).routes:
        if isinstance(route, HTTPRoute):
            pattern = re.sub(r"\{[^}]+\}", "{}", route.path)
            routes |= {
                (method, pattern) for handler in route.route_handlers
                for method in handler.http_methods
            }  # fmt: skip
    named = re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)", integrating())
    assert len(named) >= 15
    for method, path in named:
        assert (method, re.sub(r"\{[^}]+\}", "{}", path)) in routes, (method, path)
