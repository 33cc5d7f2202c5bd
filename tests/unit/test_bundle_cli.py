"""``dataex dispute verify-bundle FILE --jwks FILE``: 0 and what verified, 1 and the first problem,
2 for what cannot be read; it loads no server code."""

from __future__ import annotations

import io
import json
import tarfile

from exchange.cli import main
from tests.unit.test_bundle import build_case
from tests.unit.test_cli_imports import heavy, run_main


def bundle_files(tmp_path):
    case = build_case(tmp_path)
    bundle, jwks = tmp_path / "bundle.tar", tmp_path / "jwks.json"
    bundle.write_bytes(case.write())
    jwks.write_text(json.dumps(case.jwks))
    return case, bundle, jwks


def test_a_bundle_verifies_from_the_command_line(tmp_path, capsys):
    case, bundle, jwks = bundle_files(tmp_path)
    assert main(["dispute", "verify-bundle", str(bundle), "--jwks", str(jwks)]) == 0
    assert capsys.readouterr().out == (
        f"ok: the bundle of dispute {case.dispute['id']} verifies: 5 items, tree of size"
        f" {len(case.bodies)} signed at 2026-03-01T07:59:00.000000Z\n"
    )


def test_a_changed_bundle_exits_1_naming_the_item(tmp_path, capsys):
    _case, bundle, jwks = bundle_files(tmp_path)
    data = bytearray(bundle.read_bytes())
    data[-tarfile_tail(data)] ^= 0x01  # a byte of the last item (report.pdf)
    bundle.write_bytes(bytes(data))
    assert main(["dispute", "verify-bundle", str(bundle), "--jwks", str(jwks)]) == 1
    assert capsys.readouterr().out == (
        "bundle NOT verified: item 4 (report.pdf): sha256 differs from the manifest\n"
    )


def tarfile_tail(data: bytearray) -> int:
    """How far from the end the last byte of the last member's data is (before the padding)."""
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        last = tar.getmembers()[-1]
    return len(data) - (last.offset_data + last.size - 1)


def test_unreadable_input_exits_2(tmp_path, capsys):
    _case, bundle, jwks = bundle_files(tmp_path)
    assert main(["dispute", "verify-bundle", str(tmp_path / "none.tar"), "--jwks", str(jwks)]) == 2
    assert capsys.readouterr().out.startswith("cannot read: ")
    assert main(["dispute", "verify-bundle", str(bundle), "--jwks", str(tmp_path / "no")]) == 2
    assert capsys.readouterr().out.startswith("cannot read the JWKS: ")


def test_verifying_a_bundle_loads_no_server_code(tmp_path):
    _case, bundle, jwks = bundle_files(tmp_path)
    status, modules, out = run_main(tmp_path, "dispute", "verify-bundle", str(bundle),
                                    "--jwks", str(jwks))  # fmt: skip
    assert (status, out.split(":")[0]) == (0, "ok"), out
    assert heavy(modules) == []
    assert "exchange.disputes.bundle" in modules
