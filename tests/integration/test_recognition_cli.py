"""``dataex peers add|list|remove`` against the run's database (the peer's documents from files)."""

from __future__ import annotations

import msgspec

from tests.kit.processes import run_dataex, server_env
from tests.kit.recognition import PEER, Peer


async def test_peers_add_list_remove_and_a_jwks_that_does_not_sign_the_identity(settings, tmp_path):
    peer = Peer(settings)
    env = server_env(settings, tmp_path)
    jwks = tmp_path / "shdx.jwks.json"
    jwks.write_bytes(msgspec.json.encode(peer.jwks))
    identity = tmp_path / "shdx.identity.jws"
    identity.write_text(peer.identity())
    wrong = tmp_path / "other.jwks.json"
    other = Peer(settings)
    wrong.write_bytes(msgspec.json.encode(other.jwks))

    refused = run_dataex("peers", "add", PEER, "http://127.0.0.1:9", "--jwks", str(wrong),
                         "--identity", str(identity), env=env)  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "recognition_unknown_key" in refused.stderr

    added = run_dataex("peers", "add", PEER, "http://127.0.0.1:9", "--jwks", str(jwks),
                       "--identity", str(identity), env=env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert f"{PEER}\t上海示例数据交易所\ttrusted" in added.stdout
    assert peer.key.kid in added.stdout

    listed = run_dataex("peers", "list", env=env)
    assert listed.returncode == 0 and f"{PEER}\t上海示例数据交易所\ttrusted" in listed.stdout

    removed = run_dataex("peers", "remove", PEER, env=env)
    assert removed.returncode == 0, removed.stderr
    assert "removed" in removed.stdout

    bad = run_dataex("peers", "add", "shdx", "http://127.0.0.1:9", "--jwks", str(jwks),
                     "--identity", str(identity), env=env)  # fmt: skip
    assert bad.returncode == 2 and "code" in bad.stderr
