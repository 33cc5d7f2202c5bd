"""The README's Recognition section documents what peers rely on (issue 18): every field of a
feed page and of its items, and the steps that give an organisation registered from a member
credential its tokens at the peer, each step an operation the API has."""

from __future__ import annotations

import re

import msgspec

from exchange.recognition.schemas import FeedClaims, FeedItem, FeedPage
from tests.kit.access import matrix_routes
from tests.kit.processes import ROOT

FIELD_ROW = re.compile(r"^\| `(\w+)` \| ([a-z, ]+) \| .+ \|$", re.M)
OPERATION = re.compile(r"`(GET|POST|PATCH|DELETE) (/[^`\s]*)`")


def section(title: str) -> str:
    """The README's text under the heading ``title``, to the next heading of its level or up."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(title)}\n", readme, re.M)
    assert match, f"the README has no section {title!r}"
    level = len(match.group(1))
    rest = readme[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def test_every_field_of_a_feed_page_and_of_its_items_is_documented():
    documented: dict[str, set[str]] = {"page": set(), "claims": set(), "item": set()}
    for name, where in FIELD_ROW.findall(section("What a feed page holds")):
        for part in where.split(","):
            documented[part.strip()].add(name)
    for where, struct in (("page", FeedPage), ("claims", FeedClaims), ("item", FeedItem)):
        fields = {f.name for f in msgspec.structs.fields(struct)}
        assert documented[where] == fields, f"the README's {where} fields"


def test_the_steps_to_tokens_for_an_organisation_registered_from_a_credential_are_real():
    steps = section("Tokens at a peer for an organisation registered from a credential")
    named = [(method, path) for method, path in OPERATION.findall(steps)]
    routes = {(method, re.sub(r":\w+\}", "}", path)) for method, path, _ in matrix_routes()}
    assert named, "the steps name no operation"
    for operation in named:
        assert operation in routes, f"{operation} is not an operation of the API"
    order = [operation for operation in named if operation in {
        ("POST", "/v1/member-credentials"),
        ("POST", "/v1/member-credentials/accept"),
        ("POST", "/v1/organisations/{org_id}/tokens"),
    }]  # fmt: skip
    assert order[:3] == [
        ("POST", "/v1/member-credentials"),
        ("POST", "/v1/member-credentials/accept"),
        ("POST", "/v1/organisations/{org_id}/tokens"),
    ]
