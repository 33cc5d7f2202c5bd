"""Recognition's settings: the public URL peers reach; fetching a peer's URL."""

from __future__ import annotations

import pytest


def test_the_public_url_peers_reach_is_configurable_and_checked():
    from exchange.platform.settings import Settings, SettingsError

    settings = Settings.from_env({"DATAEX_PUBLIC_URL": "https://api.szdx.example/"})
    assert settings.public_url == "https://api.szdx.example"
    assert (
        Settings.from_env({"DATAEX_PUBLIC_URL": settings.public_url}).to_env()["DATAEX_PUBLIC_URL"]
        == "https://api.szdx.example"
    )
    with pytest.raises(SettingsError, match="DATAEX_PUBLIC_URL: scheme must be one of http"):
        Settings.from_env({"DATAEX_PUBLIC_URL": "ftp://x"})


@pytest.mark.parametrize("url", ["http://peer.example/V\x02K&", "http://peer example/", "http://"])
def test_a_peer_url_that_cannot_be_requested_is_a_fetch_error(url):
    from exchange.recognition.propagation import FetchError, get_json

    with pytest.raises(FetchError, match="GET "):
        get_json(url, timeout=1.0)
