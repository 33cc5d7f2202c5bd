"""The job runner: takes queued jobs off the JetStream work queue, runs each (an approved
algorithm in the sandbox, or a DP query), checks what may leave, and writes the outcome.

`JobRunner.handle` is one message: the job id. It is safe to call again for the same job — a
redelivery after a runner died, or a duplicate — because the job row decides:

- a job already final: nothing to do (the message is acked and ignored);
- a job ``queued``: this runner takes it (``start``, attempts + 1);
- a job ``running`` or ``checking_output`` whose runner died: ``requeue`` and take it again
  while attempts < `MAX_ATTEMPTS`, else ``failed_platform`` (the buyer is charged nothing and
  its ε is given back).

The outcome is written only if the row is still the one this runner started (same runner and
attempt): a runner presumed dead that wakes up late cannot overwrite its successor's outcome.

`serve` is ``dataex serve runner``: a durable pull consumer on the work-queue stream, up to
``slots`` jobs at once (one per core by default), each message kept alive with in-progress acks
while its job runs, acked when the outcome is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import msgspec

from exchange.compute import dp, outputs, sandbox
from exchange.compute.service import (
    ComputeHooks,
    ComputeTerms,
    conclude,
    refund_epsilon,
    transition,
)
from exchange.compute.states import FINAL, MAX_ATTEMPTS, JobAction
from exchange.platform.bus import fetch_batch, job_queue_subject, jobs_stream_name
from exchange.platform.canonical import canonical_json
from exchange.platform.clock import Clock
from exchange.platform.logging import get_logger
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing

log = get_logger(__name__)

CONSUMER: Final = "runners"
PROGRESS_SECONDS: Final = 5.0  # in-progress acks while a job runs
ACK_WAIT_SECONDS: Final = 30.0  # a message unacked (and not kept alive) this long is redelivered
# Stages a revision's files into a private folder: name -> path (the composition root's).
InputStager = Callable[[uuid.UUID, int, Path], Awaitable[dict[str, Path]]]


@dataclass(slots=True)
class Verdict:
    """How a run ended, as columns of the job and the actions that lead there."""

    actions: tuple[JobAction, ...]
    columns: dict[str, Any] = field(default_factory=dict)
    refund: bool = False  # the exchange failed: no CPU charged, the ε given back
    inputs: dict[str, str] = field(default_factory=dict)  # name -> SHA-256 of what it read


class JobRunner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        settings: Settings,
        hooks: ComputeHooks,
        stage_inputs: InputStager,
        keyring: KeyRing,
        *,
        name: str | None = None,
        workroot: Path | None = None,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.settings = settings
        self.hooks = hooks
        self.stage_inputs = stage_inputs
        self.keyring = keyring
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.workroot = workroot or Path(tempfile.gettempdir())

    # --- one message -----------------------------------------------------------------------------

    async def handle(self, job_id: uuid.UUID) -> str | None:
        """Run the job if it is to be run; returns its final state, or None if there was
        nothing to do."""
        row = await self._take(job_id)
        if row is None:
            return None
        try:
            verdict = await self._execute(row)
        except Exception as error:  # the exchange failed, not the job
            log.exception("job_platform_failure", job_id=str(job_id), error=str(error))
            verdict = Verdict(("fail_platform",), {"rejection_reason": "platform"}, refund=True)
        return await self._finish(row, verdict)

    async def _take(self, job_id: uuid.UUID) -> Any:
        at = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM compute_jobs WHERE id = $1 FOR UPDATE", job_id)
            if row is None or row["state"] in FINAL:
                return None
            if row["state"] != "queued":  # its runner died mid-job
                if row["attempts"] >= MAX_ATTEMPTS or row["state"] != "running":
                    row = await transition(conn, self.settings, row, "fail_platform", at,
                                           finished_at=at, cpu_ms=0,
                                           rejection_reason="runner_lost")  # fmt: skip
                    await refund_epsilon(conn, row, at)
                    await conclude(conn, self.settings, self.hooks, self.keyring, row, 0, {}, at)
                    return None
                row = await transition(conn, self.settings, row, "requeue", at)
            return await transition(
                conn, self.settings, row, "start", at, attempts=row["attempts"] + 1,
                runner=self.name, started_at=at,
            )  # fmt: skip

    async def _finish(self, started: Any, verdict: Verdict) -> str | None:
        at = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row: Any = await conn.fetchrow(
                "SELECT * FROM compute_jobs WHERE id = $1 FOR UPDATE", started["id"]
            )
            if (
                row["state"] not in ("running", "checking_output")
                or row["runner"] != self.name
                or row["attempts"] != started["attempts"]
            ):
                log.warning("job_taken_over", job_id=str(row["id"]), state=row["state"])
                return None
            columns = {"finished_at": at, **verdict.columns}
            for index, action in enumerate(verdict.actions):
                last = index == len(verdict.actions) - 1
                row = await transition(conn, self.settings, row, action, at,
                                       **(columns if last else {}))  # fmt: skip
            if verdict.refund:
                await refund_epsilon(conn, row, at)
            limit_ms = int(_json(row["limits"])["cpu_seconds"]) * 1000
            # Only the limit's CPU is charged (a job of many processes may use more in all).
            charged = 0 if verdict.refund else min(row["cpu_ms"] or 0, limit_ms)
            row = await conclude(conn, self.settings, self.hooks, self.keyring, row, charged,
                                 verdict.inputs, at)  # fmt: skip
        log.info("job_finished", job_id=str(row["id"]), state=row["state"])
        return str(row["state"])

    # --- running it ------------------------------------------------------------------------------

    async def _execute(self, row: Any) -> Verdict:
        grant = await self.hooks.grant(row["grant_id"])
        if grant is None or grant.state != "active":
            return Verdict(("fail_platform",), {"cpu_ms": 0, "rejection_reason": "grant"},
                           refund=True)  # fmt: skip
        async with self.pool.acquire() as conn:
            terms = await self.hooks.terms(conn, row["product_id"], row["revision"], grant.plan_id)
        folder = await asyncio.to_thread(_private_folder, self.workroot)
        try:
            inputs = await self.stage_inputs(row["product_id"], row["revision"], folder / "inputs")
            hashes = await asyncio.to_thread(_hashes, inputs)
            verdict = await self._run(row, terms, inputs, folder)
            verdict.inputs = hashes
            return verdict
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    async def _run(
        self, row: Any, terms: ComputeTerms, inputs: dict[str, Path], folder: Path
    ) -> Verdict:
        if row["kind"] == "query":
            return await asyncio.to_thread(_run_query, row, terms, inputs)
        source = await self.pool.fetchval(
            "SELECT source FROM compute_algorithms WHERE grant_id = $1 AND sha256 = $2"
            " AND state = 'approved'",
            row["grant_id"], row["algorithm_sha256"],
        )  # fmt: skip
        if source is None:  # approved at submission: a changed row is the exchange's fault
            return Verdict(("fail_platform",), {"cpu_ms": 0}, refund=True)
        return await asyncio.to_thread(_run_algorithm, row, terms, inputs, bytes(source), folder)

    # --- the queue -------------------------------------------------------------------------------

    async def serve(self, nats: Any, stop: asyncio.Event, slots: int) -> None:
        """Take jobs off the work queue until ``stop``: up to ``slots`` at once."""
        js = nats.jetstream()
        sub = await js.pull_subscribe(
            job_queue_subject(self.settings), durable=CONSUMER,
            stream=jobs_stream_name(self.settings),
            config=_consumer_config(),
        )  # fmt: skip
        running: set[asyncio.Task[None]] = set()
        log.info("runner_started", runner=self.name, slots=slots)
        while not stop.is_set():
            want = slots - len(running)
            if want <= 0:
                await asyncio.wait(running, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            for message in await fetch_batch(sub, want, 0.5, gather_seconds=0.0):
                task = asyncio.create_task(self._one(message))
                running.add(task)
                task.add_done_callback(running.discard)
        if running:
            await asyncio.wait(running)

    async def _one(self, message: Any) -> None:
        try:
            job_id = uuid.UUID(message.data.decode())
        except ValueError:
            await message.term()
            return

        async def keep_alive() -> None:
            while True:
                await asyncio.sleep(PROGRESS_SECONDS)
                with contextlib.suppress(Exception):
                    await message.in_progress()

        alive = asyncio.create_task(keep_alive())
        try:
            await self.handle(job_id)
            await message.ack()
        except Exception as error:
            log.exception("job_message_failed", job_id=str(job_id), error=str(error))
            with contextlib.suppress(Exception):
                await message.nak(delay=1.0)
        finally:
            alive.cancel()


def _hashes(inputs: Mapping[str, Path]) -> dict[str, str]:
    hashes = {}
    for name, path in inputs.items():
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
        hashes[name] = digest.hexdigest()
    return hashes


def _private_folder(root: Path) -> Path:
    """A folder of the runner's own (0700) for one job, with an ``inputs`` folder in it."""
    folder = Path(tempfile.mkdtemp(prefix="dataex-job-", dir=root))  # 0700
    (folder / "inputs").mkdir(mode=0o700)
    return folder


def _consumer_config() -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig

    return ConsumerConfig(
        durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_SECONDS,
        max_ack_pending=-1,
    )  # fmt: skip


def _limits(row: Any) -> sandbox.Limits:
    limits = _json(row["limits"])
    return sandbox.Limits(
        cpu_seconds=int(limits["cpu_seconds"]),
        wall_seconds=float(limits["wall_seconds"]),
        memory_bytes=int(limits["memory_mb"]) * 2**20,
        pids=int(limits["pids"]),
        output_bytes=int(limits["output_kb"]) * 1024,
    )


def _json(raw: Any) -> Any:
    return msgspec.json.decode(raw) if isinstance(raw, (str, bytes)) else raw


def _rows(inputs: Mapping[str, Path]) -> Callable[[], Iterable[Mapping[str, Any]]]:
    csvs = [path for name, path in sorted(inputs.items()) if name.endswith(".csv")]
    return lambda: outputs.csv_rows(*csvs)


def _run_algorithm(
    row: Any, terms: ComputeTerms, inputs: Mapping[str, Path], source: bytes, folder: Path
) -> Verdict:
    program = folder / "algorithm.py"
    program.write_bytes(source)
    workdir = folder / "job"
    workdir.mkdir(mode=0o700)
    limits = _limits(row)
    params = canonical_json(_json(row["params"]))
    outcome = sandbox.run(program, inputs, params, limits, workdir)
    cpu_ms = round(outcome.cpu_seconds * 1000)
    ran = {"cpu_ms": cpu_ms, "exit_code": outcome.exit_code}
    if outcome.status == "failed_platform":
        log.warning("sandbox_failed", job_id=str(row["id"]), why=outcome.stderr_tail[-500:])
        return Verdict(("fail_platform",), {"cpu_ms": 0}, refund=True)
    if outcome.status == "timed_out":
        return Verdict(("time_out",), {**ran, "limit_kind": outcome.limit})
    if outcome.status == "limit_exceeded":
        return Verdict(("exceed",), {**ran, "limit_kind": outcome.limit})
    if outcome.exit_code != 0 or outcome.signal is not None:
        return Verdict(("fail_algorithm",), ran)
    try:
        result = outputs.check(
            workdir / "output", max_bytes=limits.output_bytes, k=row["k"],
            forbidden_columns=terms.forbidden_columns(), input_rows=_rows(inputs),
            refused=outcome.output_refused, max_rows=min(terms_max_rows(terms), outputs.MAX_ROWS),
        )  # fmt: skip
    except outputs.OutputRejected as rejected:
        return Verdict(("check", "reject_output"), {**ran, "rejection_reason": rejected.reason})
    table = {"columns": list(result.columns), "rows": [list(r) for r in result.rows]}
    return Verdict(
        ("check", "succeed"),
        {**ran, "result": canonical_json(table).decode(), "result_sha256": result.sha256},
    )


def terms_max_rows(terms: ComputeTerms) -> int:
    return terms.sandbox.max_rows if terms.sandbox is not None else outputs.MAX_ROWS


def _run_query(row: Any, terms: ComputeTerms, inputs: Mapping[str, Path]) -> Verdict:
    started = time.thread_time()
    query = msgspec.convert(_json(row["query"]), dp.Query)
    try:
        released = dp.run_query(
            query, _rows(inputs)(), terms.bounds(), max_rows=_json(row["limits"])["max_rows"]
        )
    except dp.QueryRefused:
        return Verdict(("fail_platform",), {"cpu_ms": 0, "rejection_reason": "query"}, refund=True)
    except dp.DatasetTooLarge:  # the data outgrew its public limit: the charge stands
        return Verdict(("fail_platform",), {"cpu_ms": 0, "rejection_reason": "too_many_rows"})
    cpu_ms = round((time.thread_time() - started) * 1000)
    table = {
        "columns": released.columns, "rows": released.rows, "epsilon": released.epsilon,
        "mechanism": released.mechanism,
    }  # fmt: skip
    data = canonical_json(table)
    return Verdict(
        ("check", "succeed"),
        {"cpu_ms": cpu_ms, "exit_code": 0, "result": data.decode(),
         "result_sha256": hashlib.sha256(data).hexdigest()},
    )  # fmt: skip
