"""Talking to the API in tests: bearer headers, organisations and their tokens, problem details."""

from __future__ import annotations

from typing import Any

from exchange.identity.uscc import ALPHABET, check_character

VALID_USCC = [
    "91110000710925462X",
    "914403001922038216",
    "9144030071526726XG",
    "91440300708461136T",
    "91350100M000100Y43",
]
PROBLEM = "application/problem+json"


def make_uscc(seed: int) -> str:
    """A valid USCC distinct per seed (for registering many organisations)."""
    body = "91" + "310000" + "".join(ALPHABET[(seed // 31**i) % 31] for i in range(9))
    return body + check_character(body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def org_body(
    uscc: str, roles: list[str] | None = None, name: str = "上海示例数据科技有限公司"
) -> dict[str, Any]:
    return {
        "name": name,
        "uscc": uscc,
        "roles": roles or ["seller", "buyer"],
        "region": "310000",
        "contact": {"name": "张三", "email": "zhang@example.cn", "phone": "+86 21 5555 0000"},
    }


async def register_org(
    client: Any, admin: str, uscc: str, roles: list[str] | None = None
) -> dict[str, Any]:
    response = await client.post(
        "/v1/organisations", json=org_body(uscc, roles), headers=bearer(admin)
    )
    assert response.status_code == 201, response.text
    organisation: dict[str, Any] = response.json()
    return organisation


async def issue_token(
    client: Any, admin: str, org_id: str, roles: list[str], days: int = 30
) -> str:
    response = await client.post(
        f"/v1/organisations/{org_id}/tokens",
        json={"name": "test", "roles": roles, "expires_in_days": days},
        headers=bearer(admin),
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with this status and code; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"] == f"urn:dataex:problem:{code}"
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body
