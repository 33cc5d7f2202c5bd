"""PostgreSQL: the connection pool and the migration runner."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from exchange.platform import paths
from exchange.platform.logging import get_logger

log = get_logger(__name__)

SCHEMAS_DIR = paths.SCHEMAS_DIR
MIGRATIONS_DIR = SCHEMAS_DIR / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed 64-bit number; every dataex process migrating the same database takes this lock.
_MIGRATION_LOCK = 0x64617461_6578_01
MIGRATION_TIMEOUT_S = 3600


# A connection of our own or one borrowed from a pool; and anything that runs a query.
Connection = asyncpg.Connection | PoolConnectionProxy
Executor = Connection | asyncpg.Pool


class MigrationError(RuntimeError):
    """The database and the migration files disagree; start-up must stop."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Numbered ``NNNN_name.sql`` files, in order; gaps and duplicates are errors."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name}:"
                f" expected number {expected:04d}"
                " (numbers start at 0001 and have no gaps or duplicates)"
            )
    return migrations


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for json_type in ("json", "jsonb"):
        await conn.set_type_codec(
            json_type, encoder=_encode_json, decoder=msgspec.json.decode, schema="pg_catalog"
        )


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached just now (a restart, a failover, a
    dropped connection) rather than that the work is wrong. Such work is retried as it is, and
    never counted against the work: the server coming back is the fix."""
    if isinstance(error, asyncpg.InterfaceError):
        return "closed" in str(error)  # "connection is closed"; the rest are programming errors
    if isinstance(error, asyncpg.InternalClientError):
        # A pooled connection whose server died under an earlier operation can be handed out
        # once more before the pool drops it: "cannot switch to state 12; another operation
        # (2) is in progress" (seen when PostgreSQL is killed mid-run). Nothing was sent.
        return "another operation" in str(error)
    return isinstance(
        error,
        OSError  # refused, reset, the Unix socket gone while the server restarts
        | TimeoutError
        | asyncpg.PostgresConnectionError  # class 08, and a connection lost mid-query
        | asyncpg.exceptions.CannotConnectNowError  # starting up, recovering
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.CrashShutdownError
        | asyncpg.exceptions.TooManyConnectionsError,
    )


def database_unreachable(error: BaseException) -> bool:
    """`is_unavailable`, told apart from the API's own I/O: an operating-system error (refused,
    reset, no such socket, timed out) counts only when asyncpg raised it, since a request also
    reads and writes files and calls peers, whose failures are not PostgreSQL's."""
    if not is_unavailable(error):
        return False
    if isinstance(
        error, asyncpg.PostgresError | asyncpg.InterfaceError | asyncpg.InternalClientError
    ):
        return True
    frame = error.__traceback__
    while frame is not None:
        if str(frame.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg."):
            return True
        frame = frame.tb_next
    return False


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool.

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    on every release: a round trip per acquire, three per order request. Our pooled
    connections keep no session state: locks are transaction-scoped, settings are never SET
    on them, and the relay listens on a connection of its own, outside the pool. asyncpg still
    rolls back a transaction left open (``Connection._reset`` runs before this)."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, command_timeout=60)
    await _init_connection(conn)
    return conn


async def migrate(conn: Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations in order, each in its own transaction, under an advisory lock.

    Returns the names applied. Raises `MigrationError` if an applied file has changed since.
    """
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = {
            row["version"]: row for row in await conn.fetch("SELECT * FROM schema_migrations")
        }
        _check_applied(applied, migrations)
        for migration in migrations:
            if migration.version in applied:
                continue
            async with conn.transaction():
                # Not the connection's 60 s: a data migration on a large table takes its time.
                await conn.execute(migration.sql, timeout=MIGRATION_TIMEOUT_S)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            label = f"{migration.version:04d}_{migration.name}"
            log.info("migration_applied", migration=label)
            applied_now.append(label)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


def _check_applied(applied: dict[int, Any], migrations: list[Migration]) -> None:
    known = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{row['name']} which this code does not"
                " know: it was migrated by a newer dataex"
            )
        if row["checksum"] != migration.checksum:
            raise MigrationError(
                f"migration {version:04d}_{migration.name}.sql changed after it was applied"
                f" (applied checksum {row['checksum'][:12]}…, file now {migration.checksum[:12]}…);"
                " applied migrations are immutable: add a new numbered file instead"
            )


async def migration_status(conn: Connection) -> tuple[bool, str]:
    """Whether every migration file is applied with an unchanged checksum, and why not."""
    migrations = load_migrations()
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return False, "no migrations applied"
    rows = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_migrations")}
    try:
        _check_applied(rows, migrations)
    except MigrationError as error:
        return False, str(error)
    pending = [f"{m.version:04d}_{m.name}" for m in migrations if m.version not in rows]
    if pending:
        return False, "pending: " + ", ".join(pending)
    return True, f"{len(migrations)} applied"
