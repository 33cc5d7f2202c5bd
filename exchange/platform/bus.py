"""NATS and JetStream: the connection and the stream every dataex event lives in."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from exchange.platform.logging import get_logger
from exchange.platform.settings import Settings

log = get_logger(__name__)

# The publish dedup window: a re-published event id inside it is dropped by the server.
DUPLICATE_WINDOW_SECONDS = 120.0


def split_credentials(url: str) -> tuple[list[str], dict[str, str]]:
    """The servers of a NATS URL (``nats://a:4222,nats://b:4222``) without credentials, and the
    credentials given in them (``nats://user:password@…`` or a token, ``nats://token@…``),
    percent-decoded, as `nats.connect` options.

    Given as options, they are sent to every server, those the client learns from the cluster
    too: nats-py would send a URL's credentials only to that URL's server."""
    servers: list[str] = []
    options: dict[str, str] = {}
    for one in (part.strip() for part in url.split(",")):
        if not one:
            continue
        parts = urlsplit(one)
        if parts.username is not None and not options:
            if parts.password is not None:
                options = {"user": unquote(parts.username), "password": unquote(parts.password)}
            else:
                options = {"token": unquote(parts.username)}
        host = parts.netloc.rpartition("@")[2]
        servers.append(urlunsplit(parts._replace(netloc=host)))
    return servers, options


async def connect_nats(url: str, *, name: str, connect_timeout: float = 5.0) -> NatsClient:
    """Connect with bounded retries at start and unlimited reconnects afterwards. The URL may
    carry credentials (`split_credentials`)."""

    async def on_error(error: Exception) -> None:
        log.warning("nats_error", error=str(error))

    closing: list[NatsClient] = []

    async def on_disconnect() -> None:
        # A disconnect during our own close() is expected; anything else is worth a warning.
        if not (closing and closing[0].is_closed):
            log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    servers, credentials = split_credentials(url)
    client: NatsClient = await nats.connect(
        # A cluster is given as "nats://a:4222,nats://b:4222,...": any of them lets us in, and
        # the client learns the others from the servers and reconnects to whichever is up.
        servers,
        name=name,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **credentials,
    )
    closing.append(client)
    return client


def stream_config(settings: Settings) -> StreamConfig:
    """The one stream: every ``<prefix>.<aggregate>.<event>`` subject, on disk, kept by limits."""
    return StreamConfig(
        name=settings.stream_name,
        description="dataex domain events (CloudEvents 1.0 JSON)",
        subjects=[f"{settings.subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=settings.stream_replicas or 1,
    )


def jobs_stream_name(settings: Settings) -> str:
    """The work-queue stream compute jobs are queued on (one message per job to run)."""
    return f"{settings.stream_name}_JOBS"


def job_queue_subject(settings: Settings) -> str:
    """The subject of the job queue: outside ``<prefix>.>``, which the events stream holds
    (two streams may not share a subject)."""
    return f"{settings.subject_prefix}_jobs.run"


def stream_for(settings: Settings, subject: str) -> str:
    """The stream an outbox row's subject is published to."""
    if subject == job_queue_subject(settings):
        return jobs_stream_name(settings)
    return settings.stream_name


def jobs_stream_config(settings: Settings) -> StreamConfig:
    """The job queue: a work-queue stream, so a job's message goes when a runner acks it."""
    return StreamConfig(
        name=jobs_stream_name(settings),
        description="dataex compute jobs to run (work queue; the message is the job id)",
        subjects=[job_queue_subject(settings)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=settings.stream_replicas or 1,
    )


async def ensure_stream(client: NatsClient, settings: Settings) -> str:
    """Create the streams (the events' and the job queue's), or bring an existing events
    stream to the wanted configuration. Idempotent."""
    js = client.jetstream()
    try:
        await js.stream_info(jobs_stream_name(settings))
    except NotFoundError:
        await js.add_stream(jobs_stream_config(settings))
        log.info("stream_created", stream=jobs_stream_name(settings))
    wanted = stream_config(settings)
    try:
        info = await js.stream_info(settings.stream_name)
    except NotFoundError:
        await js.add_stream(wanted)
        log.info("stream_created", stream=settings.stream_name)
        return "created"
    current: Any = info.config
    if settings.stream_replicas is None:
        wanted.num_replicas = current.num_replicas  # unset: left to the operator
    if (
        sorted(current.subjects or []) != sorted(wanted.subjects or [])
        or current.duplicate_window != wanted.duplicate_window
        or current.num_replicas != wanted.num_replicas
    ):
        # JetStream moves an existing stream to the new replica count (NATS >= 2.10).
        await js.update_stream(wanted)
        log.info("stream_updated", stream=settings.stream_name)
        return "updated"
    return "unchanged"


async def fetch_batch(sub: Any, batch: int, wait: float, gather_seconds: float = 0.05) -> list[Any]:
    """Up to ``batch`` messages of a pull subscription; empty after ``wait`` seconds without any.

    A fetch returns what the server had at hand (often a few dozen); gather up to a full batch
    for a moment, since a consumer's batch costs a few statements whatever its size."""
    try:
        messages: list[Any] = await sub.fetch(batch, timeout=wait)
    except (TimeoutError, NatsTimeout):
        return []
    deadline = time.monotonic() + gather_seconds
    while len(messages) < batch and (left := deadline - time.monotonic()) > 0:
        try:
            messages.extend(await sub.fetch(batch - len(messages), timeout=left))
        except (TimeoutError, NatsTimeout):
            break
    return messages
