"""One settings object, read once from ``DATAEX_*`` environment variables and validated at start."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

LogFormat = Literal["auto", "console", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

_EXCHANGE_CODE = re.compile(r"^[A-Z][A-Z0-9]{1,7}$")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUBJECT_TOKEN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def redact_url(url: str) -> str:
    """A URL (or a comma-separated list of them) fit to print: a password, or a NATS token given
    as a bare user (``nats://token@host``), is shown as ``***``."""
    shown = []
    for one in url.split(","):
        try:
            parts = urlsplit(one)
            user, password = parts.username, parts.password
        except ValueError:
            shown.append("***")  # not a URL one can read safely: show none of it
            continue
        if user is not None and (password is not None or parts.scheme in ("nats", "tls")):
            login = f"{user}:***" if password is not None else "***"
            host = parts.netloc.rpartition("@")[2]
            shown.append(urlunsplit(parts._replace(netloc=f"{login}@{host}")))
        else:
            shown.append(one)
    return ",".join(shown)


class SettingsError(ValueError):
    """Raised with one line per bad variable, each naming the variable and what it must be."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable. Defaults run the whole exchange on one machine."""

    # Either may carry credentials (postgresql://user:password@…, nats://user:password@…):
    # kept out of repr(), and printed only through redact_url.
    database_url: str | None = field(default=None, repr=False)
    nats_url: str | None = field(default=None, repr=False)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    api_workers: int = 1
    gateway_port: int = 8100  # the data gateway (API delivery), a part of its own
    gateway_workers: int = 1
    runner_slots: int | None = None  # compute jobs at once per runner; None: one per core
    state_dir: Path = field(default_factory=lambda: Path(".dataex"))
    log_format: LogFormat = "auto"
    log_level: LogLevel = "info"
    exchange_code: str = "DX"
    exchange_name: str = "dataex 数据交易所"
    stream_name: str = "DATAEX"
    subject_prefix: str = "dx"
    # None: a new stream gets one replica and an existing one keeps what it has; a number
    # (3 on a 3-node JetStream cluster) is applied when the stream is created or checked.
    stream_replicas: int | None = None
    max_body_bytes: int = 1_048_576
    contract_ttl_hours: int = 72
    # Per API process (buckets are kept in memory, see exchange.platform.limits); 0 turns off.
    rate_limit_per_second: int = 200
    rate_limit_burst: int = 400
    rate_limit_anonymous_per_second: int = 500
    peer_poll_ms: int = 1000  # how often each API process pulls trusted peers' feeds; 0: never
    # The staff console: a session ends after this long without a request, and at the latest
    # after console_lifetime_hours however busy.
    console_idle_minutes: int = 30
    console_lifetime_hours: int = 12
    public_base_url: str | None = None  # where others reach this API (certificates, identity)
    # Set by `dataex up` for its parts: the file where it says what runs (exchange.supervisor).
    supervisor_status: Path | None = None
    # Set by `dataex up` for its parts (PROMETHEUS_MULTIPROC_DIR, prometheus_client's own
    # variable): the folder where every process writes its metrics and from which /metrics sums
    # them (exchange.platform.exposition). None: each process serves its own.
    metrics_dir: Path | None = None
    # How long after its dx.trade.executed was published a trade may go without a settlement
    # outcome before the settlement room's reconciler publishes the event again (and
    # `dataex ledger verify` names it if it still has none).
    reconcile_after_seconds: int = 60
    # Disputes: the respondent's days to answer before the case goes to review on its own; the
    # amount at stake (fen) from which a resolution needs two reviewers and an arbitration award
    # two admins; the largest evidence upload (bytes; a dispute holds at most
    # DISPUTE_EVIDENCE_TOTAL_BYTES of party uploads).
    dispute_response_days: int = 7
    dispute_four_eyes_fen: int = 100_000
    dispute_evidence_max_bytes: int = 10 * 1024 * 1024

    @property
    def public_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host  # noqa: S104
        return f"http://{host}:{self.http_port}"

    def subject(self, aggregate: str, event: str) -> str:
        return f"{self.subject_prefix}.{aggregate}.{event}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``DATAEX_*`` variable; `SettingsError` lists all bad ones."""
        env = os.environ if env is None else env
        problems: list[str] = []
        values: dict[str, object] = {}

        def text(name: str) -> str | None:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return None
            return raw.strip()

        def url(name: str, schemes: tuple[str, ...], *, several: bool = False) -> str | None:
            raw = text(name)
            if raw is None:
                return None
            # NATS: a comma-separated list of a cluster's servers is one setting.
            for one in raw.split(",") if several else [raw]:
                parts = urlsplit(one.strip())
                shown = redact_url(one.strip())
                if parts.scheme not in schemes:
                    problems.append(
                        f"{name}: scheme must be one of {', '.join(schemes)}, got {shown!r}"
                    )
                elif not parts.netloc and "host=" not in parts.query:
                    problems.append(f"{name}: no host in {shown!r}")
            return raw

        def integer(name: str, low: int, high: int) -> int | None:
            raw = text(name)
            if raw is None:
                return None
            try:
                number = int(raw)
            except ValueError:
                problems.append(f"{name}: must be an integer, got {raw!r}")
                return None
            if not low <= number <= high:
                problems.append(f"{name}: must be between {low} and {high}, got {number}")
                return None
            return number

        def choice(name: str, allowed: tuple[str, ...]) -> str | None:
            raw = text(name)
            if raw is None:
                return None
            if raw.lower() not in allowed:
                problems.append(f"{name}: must be one of {', '.join(allowed)}, got {raw!r}")
                return None
            return raw.lower()

        def pattern(name: str, regex: re.Pattern[str], what: str) -> str | None:
            raw = text(name)
            if raw is None:
                return None
            if not regex.match(raw):
                problems.append(f"{name}: must be {what}, got {raw!r}")
                return None
            return raw

        values["database_url"] = url("DATAEX_DATABASE_URL", ("postgresql", "postgres"))
        values["nats_url"] = url("DATAEX_NATS_URL", ("nats", "tls"), several=True)
        values["http_host"] = text("DATAEX_HTTP_HOST")
        values["http_port"] = integer("DATAEX_HTTP_PORT", 1, 65535)
        values["api_workers"] = integer("DATAEX_API_WORKERS", 1, 64)
        values["gateway_port"] = integer("DATAEX_GATEWAY_PORT", 1, 65535)
        values["gateway_workers"] = integer("DATAEX_GATEWAY_WORKERS", 1, 64)
        values["runner_slots"] = integer("DATAEX_RUNNER_SLOTS", 1, 256)
        state = text("DATAEX_STATE_DIR")
        values["state_dir"] = Path(state) if state else None
        values["log_format"] = choice("DATAEX_LOG_FORMAT", ("auto", "console", "json"))
        values["log_level"] = choice("DATAEX_LOG_LEVEL", ("debug", "info", "warning", "error"))
        values["exchange_code"] = pattern(
            "DATAEX_EXCHANGE_CODE",
            _EXCHANGE_CODE,
            "2-8 upper-case letters or digits, starting with a letter",
        )
        name = text("DATAEX_EXCHANGE_NAME")
        if name is not None and len(name) > 200:
            problems.append("DATAEX_EXCHANGE_NAME: must be at most 200 characters")
        values["exchange_name"] = name
        values["stream_name"] = pattern(
            "DATAEX_STREAM_NAME", _STREAM_NAME, "1-64 letters, digits, '_' or '-'"
        )
        values["subject_prefix"] = pattern(
            "DATAEX_SUBJECT_PREFIX", _SUBJECT_TOKEN, "a lower-case NATS subject token such as 'dx'"
        )
        values["stream_replicas"] = integer("DATAEX_STREAM_REPLICAS", 1, 5)
        values["max_body_bytes"] = integer("DATAEX_MAX_BODY_BYTES", 1024, 100_000_000)
        values["contract_ttl_hours"] = integer("DATAEX_CONTRACT_TTL_HOURS", 1, 24 * 365)
        values["rate_limit_per_second"] = integer("DATAEX_RATE_LIMIT_PER_SECOND", 0, 1_000_000)
        values["rate_limit_burst"] = integer("DATAEX_RATE_LIMIT_BURST", 1, 10_000_000)
        values["rate_limit_anonymous_per_second"] = integer(
            "DATAEX_RATE_LIMIT_ANONYMOUS_PER_SECOND", 0, 1_000_000
        )
        values["peer_poll_ms"] = integer("DATAEX_PEER_POLL_MS", 0, 3_600_000)
        values["console_idle_minutes"] = integer("DATAEX_CONSOLE_IDLE_MINUTES", 1, 24 * 60)
        values["console_lifetime_hours"] = integer("DATAEX_CONSOLE_LIFETIME_HOURS", 1, 24 * 7)
        values["public_base_url"] = url("DATAEX_PUBLIC_URL", ("http", "https"))
        status = text("DATAEX_SUPERVISOR_STATUS")
        values["supervisor_status"] = Path(status) if status else None
        metrics_dir = text("PROMETHEUS_MULTIPROC_DIR")
        values["metrics_dir"] = Path(metrics_dir) if metrics_dir else None
        values["reconcile_after_seconds"] = integer("DATAEX_RECONCILE_AFTER_SECONDS", 1, 86_400)
        values["dispute_response_days"] = integer("DATAEX_DISPUTE_RESPONSE_DAYS", 1, 365)
        values["dispute_four_eyes_fen"] = integer("DATAEX_DISPUTE_FOUR_EYES_FEN", 0, 10**15)
        values["dispute_evidence_max_bytes"] = integer(
            "DATAEX_DISPUTE_EVIDENCE_MAX_BYTES", 1024, 64 * 1024 * 1024
        )

        if problems:
            raise SettingsError(problems)
        return cls(**{key: value for key, value in values.items() if value is not None})  # type: ignore[arg-type]

    def with_servers(self, database_url: str, nats_url: str) -> Settings:
        """A copy pointing at concrete servers (used once embedded servers are up)."""
        return replace(self, database_url=database_url, nats_url=nats_url)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {
            "DATAEX_HTTP_HOST": self.http_host,
            "DATAEX_HTTP_PORT": str(self.http_port),
            "DATAEX_API_WORKERS": str(self.api_workers),
            "DATAEX_GATEWAY_PORT": str(self.gateway_port),
            "DATAEX_GATEWAY_WORKERS": str(self.gateway_workers),
            "DATAEX_STATE_DIR": str(self.state_dir),
            "DATAEX_LOG_FORMAT": self.log_format,
            "DATAEX_LOG_LEVEL": self.log_level,
            "DATAEX_EXCHANGE_CODE": self.exchange_code,
            "DATAEX_EXCHANGE_NAME": self.exchange_name,
            "DATAEX_STREAM_NAME": self.stream_name,
            "DATAEX_SUBJECT_PREFIX": self.subject_prefix,
            "DATAEX_MAX_BODY_BYTES": str(self.max_body_bytes),
            "DATAEX_CONTRACT_TTL_HOURS": str(self.contract_ttl_hours),
            "DATAEX_RATE_LIMIT_PER_SECOND": str(self.rate_limit_per_second),
            "DATAEX_RATE_LIMIT_BURST": str(self.rate_limit_burst),
            "DATAEX_RATE_LIMIT_ANONYMOUS_PER_SECOND": str(self.rate_limit_anonymous_per_second),
            "DATAEX_PEER_POLL_MS": str(self.peer_poll_ms),
            "DATAEX_CONSOLE_IDLE_MINUTES": str(self.console_idle_minutes),
            "DATAEX_CONSOLE_LIFETIME_HOURS": str(self.console_lifetime_hours),
            "DATAEX_RECONCILE_AFTER_SECONDS": str(self.reconcile_after_seconds),
            "DATAEX_DISPUTE_RESPONSE_DAYS": str(self.dispute_response_days),
            "DATAEX_DISPUTE_FOUR_EYES_FEN": str(self.dispute_four_eyes_fen),
            "DATAEX_DISPUTE_EVIDENCE_MAX_BYTES": str(self.dispute_evidence_max_bytes),
        }
        if self.runner_slots is not None:
            env["DATAEX_RUNNER_SLOTS"] = str(self.runner_slots)
        if self.stream_replicas is not None:
            env["DATAEX_STREAM_REPLICAS"] = str(self.stream_replicas)
        if self.database_url:
            env["DATAEX_DATABASE_URL"] = self.database_url
        if self.nats_url:
            env["DATAEX_NATS_URL"] = self.nats_url
        if self.public_base_url:
            env["DATAEX_PUBLIC_URL"] = self.public_base_url
        if self.supervisor_status:
            env["DATAEX_SUPERVISOR_STATUS"] = str(self.supervisor_status)
        if self.metrics_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        return env
