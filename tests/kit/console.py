"""Driving the staff console over HTTP without a browser: sign in, read a form's hidden fields,
post a form as the page would."""

from __future__ import annotations

import re
from typing import Any

_HIDDEN = re.compile(r'<input type="hidden" name="(?P<name>[^"]+)" value="(?P<value>[^"]*)"')


def hidden_fields(html: str) -> dict[str, str]:
    return {m["name"]: m["value"] for m in _HIDDEN.finditer(html)}


async def sign_in(client: Any, token: str, next_path: str = "/console/") -> Any:
    """Sign in with a token as the sign-in form does; the final response (after redirects)."""
    page = await client.get("/console/sign-in")
    assert page.status_code == 200, page.text
    fields = hidden_fields(page.text)
    return await client.post(
        "/console/sign-in",
        data={"_sign_in": fields["_sign_in"], "next": next_path, "token": token},
        follow_redirects=False,
    )


async def csrf_of(client: Any, path: str = "/console/") -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    return hidden_fields(page.text)["_csrf"]
