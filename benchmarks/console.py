"""``dataex bench console``: the staff console's queue and case pages with 10,000 open review
cases, client-observed and server time, beside a static file and ``/health/live`` from the same
server. Issue 19's target: queue page p95 <= 150 ms and case page p95 <= 100 ms server time
(keyset pages of 50). Figures, not tests.

By default it runs in a database, a stream and a state folder of its own on the configured (or
embedded) servers, removed afterwards: it migrates them, bootstraps the operator's admin token
and issues two reviewer tokens through the identity service, seeds ``--cases`` open cases
(`benchmarks.console_seed`: listings with COPY, orders and staff proposals through the API),
and starts the API as production does (``dataex serve api`` under granian, ``--api-workers``).
With ``--url`` it measures a running exchange instead, whose database is the configured one
(or that of the `dataex up` on the same state folder), seeding it only with ``--seed``; the
tokens are issued there too (an admin token, as `dataex admin bootstrap` issues one, and two
reviewers' expiring in 7 days; audited).

Then, over loopback with httpx and ``--concurrency`` requests at a time (1 by default), signed in
through the real ``POST /console/sign-in`` form as one of the reviewers:

1. walks the whole queue by its keyset cursor (every ``next`` link), checking it lists every
   open case once, and checks that a page of each seeded case shape shows what makes it that
   shape (the revision's highlighted fields, one approval of two, the order's CAU-05 hit, the
   staff proposal);
2. measures ``--requests`` requests of each page kind, interleaved (request i is of kind
   i mod k, so a slower spell of the machine touches every kind alike): the queue's first page,
   pages in the second half of the list reached by the cursor, the filters (kind, a common
   rule, a rule no listing has, older than a week, mine) and case pages of each shape (first
   listing, material revision with its field diff, four-eyes with one approval, order, staff
   proposal), beside ``/console/static/console.css`` and ``/health/live``. Each page's time as
   the client saw it and as the server measured it (its ``Server-Timing: app;dur=``);
3. prints PostgreSQL's plans (EXPLAIN ANALYZE, custom and generic) of the queue's statement
   for a deep page and each filter, and what each scans per page.

Writes ``console-<stamp>.json`` under ``--out``.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import asyncpg

from benchmarks.console_seed import Reviewer, open_through_api, seed_listing_cases
from benchmarks.delivery import Processes, _spawn, _wait_answering
from benchmarks.scratch import UNLIMITED, drop_scratch, free_port, scratch_settings
from exchange.platform.audit import Actor
from exchange.platform.clock import SystemClock
from exchange.platform.db import connect, create_pool
from exchange.platform.paging import decode_cursor
from exchange.platform.settings import Settings
from exchange.review.service import queue_sql

if TYPE_CHECKING:
    import httpx  # the bench extra: imported where the requests are made

QUEUE = "/console/reviews/"
PAGE = 50
TARGETS = {"queue": 150.0, "case": 100.0}  # ms, p95 of the server's own time
COMMON_RULE = "CAU-04"  # important data: about a fifth of the listings
RARE_RULE = "CAU-05"  # order-time cross-border rule: order cases only (about 1 %)
WARMUP = 20  # requests of each kind first, not counted
_HIDDEN = re.compile(r'<input type="hidden" name="(?P<name>[^"]+)" value="(?P<value>[^"]*)"')
_NEXT = re.compile(r'<a href="(?P<href>[^"]+)" rel="next">')
_CASE = re.compile(r'<tr id="case-[^"]+" data-case="(?P<id>[0-9a-f-]{36})"')
_TIMING = re.compile(r"app;dur=(?P<ms>[0-9.]+)")


@dataclass(frozen=True)
class Staff:
    admin: str
    me: Reviewer  # signs in to the console
    other: Reviewer  # first approvals and claims of others


@dataclass
class Samples:
    group: str  # queue, case, baseline
    urls: list[str]
    client: list[float] = field(default_factory=list)  # ms
    server: list[float] = field(default_factory=list)  # ms, from Server-Timing
    errors: Counter[str] = field(default_factory=Counter)


# --- set-up --------------------------------------------------------------------------------


async def _scratch(live: Settings, tag: str, state: Path, api_workers: int) -> Settings:
    settings, _ = await scratch_settings(
        live, f"console_{tag}", state_dir=state, http_host="127.0.0.1", http_port=free_port(),
        api_workers=api_workers, peer_poll_ms=0, **UNLIMITED,
    )  # fmt: skip
    return settings


async def _staff(pool: asyncpg.Pool, settings: Settings) -> Staff:
    """A new admin token of the operator (as `dataex admin bootstrap` issues one) and two
    reviewer tokens of the operator's organisation, issued through the identity service."""
    from exchange.identity.schemas import TokenCreate
    from exchange.identity.service import IdentityService

    identity = IdentityService(pool, SystemClock())
    actor = Actor.cli("bench console")
    admin, _ = await identity.bootstrap(actor, settings.exchange_name)
    org = admin.details.org_id
    reviewers = []
    for name in ("审核员 压测甲", "审核员 压测乙"):
        issued = await identity.issue_token(
            actor, org, TokenCreate(name=name, roles=["reviewer"], expires_in_days=7),
            ceiling=None, created_by=admin.details.id,
        )  # fmt: skip
        reviewers.append(Reviewer(issued.token, issued.details.id, org))
    return Staff(admin.token, reviewers[0], reviewers[1])


async def _seed(
    settings: Settings, pool: asyncpg.Pool, client: httpx.AsyncClient, staff: Staff,
    cases: int, out: TextIO,
) -> dict[str, Any]:  # fmt: skip
    orders = max(1, cases // 100)
    prohibitions = exporters = max(1, cases // 200)
    listings = cases - orders - prohibitions - exporters
    if listings < 10:
        raise ValueError(f"--cases {cases}: too few for every shape (at least 20)")
    started = time.perf_counter()
    sellers, shapes = await seed_listing_cases(
        settings, pool, staff.me, staff.other, listings, max(10, exporters, cases // 200), out
    )
    made = await open_through_api(
        client, staff.admin, pool, sellers, orders, prohibitions, exporters, out
    )
    return {"seconds": round(time.perf_counter() - started, 1),
            "listing_shapes": dict(sorted(shapes.items())), "through_api": dict(made)}  # fmt: skip


async def _sign_in(client: httpx.AsyncClient, token: str) -> None:
    """As the sign-in form does: its hidden token (and cookie), then the POST."""
    page = await client.get("/console/sign-in")
    fields = {m["name"]: m["value"] for m in _HIDDEN.finditer(page.text)}
    answer = await client.post(
        "/console/sign-in", data={"_sign_in": fields["_sign_in"], "next": QUEUE, "token": token}
    )
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in refused: {answer.status_code} {answer.text[:300]}")


async def _walk(
    client: httpx.AsyncClient, open_cases: int, out: TextIO, *, strict: bool
) -> dict[str, Any]:
    """Every page of the queue by its ``next`` links: their URLs, and a check that each open
    case is listed once (``strict``: or fail; a running exchange's queue may change meanwhile)."""
    started = time.perf_counter()
    urls, seen = [QUEUE], []
    url: str | None = QUEUE
    while url is not None:
        page = await client.get(url)
        if page.status_code != 200:
            raise RuntimeError(f"GET {url}: {page.status_code} {page.text[:300]}")
        seen += [m["id"] for m in _CASE.finditer(page.text)]
        found = _NEXT.search(page.text)
        url = html.unescape(found["href"]) if found else None
        if url is not None:
            urls.append(url)
    seconds = time.perf_counter() - started
    if len(seen) != len(set(seen)) or len(seen) != open_cases:
        problem = (f"the queue's pages list {len(seen)} cases ({len(set(seen))} distinct);"
                   f" {open_cases} are open")  # fmt: skip
        if strict:
            raise RuntimeError(problem)
        out.write(f"warning: {problem}\n")
    out.write(f"walked the queue: {len(urls)} pages of up to {PAGE}, {len(seen):,} cases, each"
              f" once ({seconds:.1f}s)\n")  # fmt: skip
    return {"pages": len(urls), "cases": len(seen), "seconds": round(seconds, 2), "urls": urls}


_SHAPES_SQL = """
SELECT c.id, CASE
    WHEN c.kind = 'listing' AND EXISTS (SELECT 1 FROM review_decisions d
                                        WHERE d.case_id = c.id AND d.verdict = 'approve')
        THEN 'case: four-eyes, one approval'
    WHEN c.kind = 'listing' AND c.revision > 1 THEN 'case: material revision (diff)'
    WHEN c.kind = 'listing' THEN 'case: first listing'
    WHEN c.kind = 'order' THEN 'case: order'
    ELSE 'case: staff proposal' END AS shape
FROM review_cases c WHERE c.state = 'open'
"""


async def _kinds(
    pool: asyncpg.Pool, walk: dict[str, Any], rng: random.Random
) -> dict[str, Samples]:
    urls: list[str] = walk["urls"]
    deep = urls[max(1, len(urls) // 2) :] or urls
    kinds = {
        "queue: first page": [QUEUE],
        "queue: deep page (keyset cursor)": deep,
        "queue: kind=order": [f"{QUEUE}?kind=order"],
        f"queue: rule={COMMON_RULE}": [f"{QUEUE}?rule={COMMON_RULE}"],
        f"queue: rule={RARE_RULE} (no listing has it)": [f"{QUEUE}?rule={RARE_RULE}"],
        "queue: older than a week": [f"{QUEUE}?older_than=168"],
        "queue: mine": [f"{QUEUE}?mine=true"],
    }
    samples = {name: Samples("queue", list(paths)) for name, paths in kinds.items()}
    by_shape: dict[str, list[str]] = {}
    for row in await pool.fetch(_SHAPES_SQL):
        by_shape.setdefault(row["shape"], []).append(f"/console/reviews/{row['id']}")
    for shape in sorted(by_shape):
        ids = by_shape[shape]
        samples[shape] = Samples("case", rng.sample(ids, min(len(ids), 500)))
    samples["baseline: static file"] = Samples("baseline", ["/console/static/console.css"])
    samples["baseline: /health/live"] = Samples("baseline", ["/health/live"])
    return samples


# What a page of each shape shows (checked once before measuring: the shapes are real).
_MARKS = {
    "case: material revision (diff)": '<tr data-field="',  # the field-by-field table …
    "case: four-eyes, one approval": 'data-approvals="1" data-needed="2"',
    "case: order": 'class="hit hit-cautious" data-rule="CAU-05"',
    "case: staff proposal": 'class="facts proposal"',
}
_CHANGED = 'class="changed"'  # … with the revision's changes highlighted


async def _check_shapes(client: httpx.AsyncClient, samples: dict[str, Samples]) -> None:
    for name, mark in _MARKS.items():
        if name not in samples:
            raise RuntimeError(f"no open case of the shape {name!r}")
        page = await client.get(samples[name].urls[0])
        text = page.text
        if (
            page.status_code != 200
            or mark not in text
            or (name.startswith("case: material") and _CHANGED not in text)
        ):
            raise RuntimeError(f"{samples[name].urls[0]} ({name}) does not show {mark!r}")


# --- measuring -----------------------------------------------------------------------------


async def _measure(
    client: httpx.AsyncClient, samples: dict[str, Samples], requests: int, concurrency: int,
    out: TextIO,
) -> float:  # fmt: skip
    names = list(samples)
    cycles = {name: itertools.cycle(s.urls) for name, s in samples.items()}
    for name in names:  # warm: templates compiled, statements prepared, connections open
        for _ in range(min(WARMUP, requests)):
            await client.get(next(cycles[name]))
    cycles = {name: itertools.cycle(s.urls) for name, s in samples.items()}
    schedule = iter(range(requests * len(names)))
    total = requests * len(names)
    done = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        for i in schedule:
            name = names[i % len(names)]
            s = samples[name]
            url = next(cycles[name])
            began = time.perf_counter()
            try:
                answer = await client.get(url)
            except Exception as error:  # noqa: BLE001 - counted, not fatal
                s.errors[type(error).__name__] += 1
                continue
            elapsed = (time.perf_counter() - began) * 1000
            if answer.status_code != 200:
                s.errors[str(answer.status_code)] += 1
                continue
            s.client.append(elapsed)
            timing = _TIMING.search(answer.headers.get("server-timing", ""))
            if timing:
                s.server.append(float(timing["ms"]))
            done += 1
            if done % 2000 == 0:
                out.write(
                    f"  {done:,} of {total:,} requests ({time.perf_counter() - started:.0f}s)\n"
                )
                out.flush()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    if len(values) == 1:
        q = {50: values[0], 95: values[0], 99: values[0]}
    else:
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        q = {50: cuts[49], 95: cuts[94], 99: cuts[98]}
    return {
        "p50_ms": round(q[50], 2), "p95_ms": round(q[95], 2), "p99_ms": round(q[99], 2),
        "max_ms": round(max(values), 2), "mean_ms": round(statistics.fmean(values), 2),
    }  # fmt: skip


# --- plans ---------------------------------------------------------------------------------


def _plan_summary(lines: list[str]) -> dict[str, Any]:
    text = "\n".join(lines)
    removed = sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", text))
    executed = re.search(r"Execution Time: ([0-9.]+) ms", text)
    indexes = sorted(set(re.findall(r"(?:Index|Index Only|Bitmap Index) Scan (?:Backward )?"
                                    r"(?:using|on) (\w+)", text)))  # fmt: skip
    return {"execution_ms": float(executed[1]) if executed else None,
            "rows_removed_by_filter": removed, "indexes": indexes,
            "seq_scan": "Seq Scan on review_cases" in text}  # fmt: skip


async def _plans(
    settings: Settings, staff: Staff, walk: dict[str, Any], out: TextIO
) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the queue's statement (`queue_sql`, as the page runs it) for a deep
    page and each filter, with the planner's custom plan (its first executions) and the
    generic one a pooled connection may switch to after five."""
    assert settings.database_url
    middle = walk["urls"][len(walk["urls"]) // 2]
    cursor = html.unescape(middle).partition("cursor=")[2]
    after = decode_cursor(cursor, (datetime, uuid.UUID)) if cursor else None
    now = datetime.now(UTC)
    base: dict[str, Any] = {"kind": None, "state": "open", "rule": None, "opened_before": None,
                            "after": None, "limit": PAGE, "claimed_by": None}  # fmt: skip
    queries = {
        f"deep page ({middle.partition('?')[0]} page {len(walk['urls']) // 2 + 1})":
            base | {"after": after},
        f"rule={COMMON_RULE}": base | {"rule": COMMON_RULE},
        f"rule={RARE_RULE} (no listing has it)": base | {"rule": RARE_RULE},
        "kind=order": base | {"kind": "order"},
        "older than a week": base | {"opened_before": now - timedelta(hours=168)},
        "mine": base | {"claimed_by": staff.me.token_id},
    }  # fmt: skip
    result: dict[str, Any] = {}
    conn = await connect(settings.database_url)
    try:
        for name, params in queries.items():
            sql, args = queue_sql(**params)
            entry: dict[str, Any] = {"sql": sql}
            # A prepared statement, as asyncpg runs it (EXPLAIN of a statement with parameters
            # would always plan it for the values given).
            await conn.execute(f"PREPARE bench_queue AS {sql}")
            try:
                values = ", ".join(_literal(v) for v in args)
                for mode in ("custom", "generic"):
                    await conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
                    lines = [r[0] for r in await conn.fetch(
                        f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_queue({values})")]  # fmt: skip
                    entry[mode] = _plan_summary(lines) | {"plan": lines}
            finally:
                await conn.execute("DEALLOCATE bench_queue; RESET plan_cache_mode")
            result[name] = entry
        sql, args = _first_page_ids()
        ids = await conn.fetch(sql, *args)
        lines = [r[0] for r in await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM review_decisions"
            " WHERE case_id = ANY($1::uuid[]) ORDER BY id", [r["id"] for r in ids])]  # fmt: skip
        result["decisions of a page's cases"] = {"custom": _plan_summary(lines) | {"plan": lines}}
    finally:
        await conn.close()
    return result


def _literal(value: object) -> str:
    """An argument of the queue's statement as an SQL literal (for EXECUTE)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, uuid.UUID):
        return f"'{value}'::uuid"
    return "'" + str(value).replace("'", "''") + "'::text"


def _first_page_ids() -> tuple[str, list[object]]:
    sql, args = queue_sql(kind=None, state="open", rule=None, opened_before=None, after=None,
                          limit=PAGE)  # fmt: skip
    return sql.replace("SELECT *", "SELECT id", 1), args


def _plan_note(entry: dict[str, Any]) -> str:
    notes = []
    for mode in ("custom", "generic"):
        s = entry.get(mode)
        if s is None:
            continue
        scanned = s["rows_removed_by_filter"]
        how = "SEQ SCAN" if s["seq_scan"] else ", ".join(s["indexes"]) or "no index"
        notes.append(f"{mode} {s['execution_ms']} ms via {how}, {scanned:,} rows read and"
                     " dropped by a filter")  # fmt: skip
    return "; ".join(notes)


# --- the run -------------------------------------------------------------------------------


async def bench_console(live: Settings, args: Any, out: TextIO) -> int:
    if args.url:
        return await _run(live, args.url.rstrip("/"), args, out, seed=args.seed)
    tag = uuid.uuid4().hex[:8]
    state = Path(tempfile.mkdtemp(prefix="dataex-bench-console-"))
    settings = await _scratch(live, tag, state, args.api_workers)
    procs = Processes()
    try:
        env = {**os.environ, **settings.to_env()}
        procs.children["api"] = _spawn([sys.executable, "-m", "exchange.cli", "serve", "api"], env)
        url = f"http://127.0.0.1:{settings.http_port}"
        await _wait_answering(f"{url}/health/live", procs.children["api"])
        return await _run(settings, url, args, out, seed=True)
    finally:
        procs.stop()
        await drop_scratch(live, settings)
        shutil.rmtree(state, ignore_errors=True)


async def _run(settings: Settings, url: str, args: Any, out: TextIO, *, seed: bool) -> int:
    import logging

    import httpx  # the bench extra

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    assert settings.database_url
    rng = random.Random(19)  # noqa: S311 - which cases are asked for, not secrets
    pool = await create_pool(settings.database_url, max_size=4)
    limits = httpx.Limits(max_connections=max(1, args.concurrency))
    try:
        staff = await _staff(pool, settings)
        report: dict[str, Any] = {"config": {
            "cases": args.cases if seed else None, "requests_per_kind": args.requests,
            "concurrency": args.concurrency, "url": url if args.url else None,
            "api_workers": None if args.url else args.api_workers, "cpus": os.cpu_count(),
            "client": "httpx over loopback, keep-alive",
            "server_time": "Server-Timing app;dur (console router entry to response start)",
        }}  # fmt: skip
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            if seed:
                out.write(f"seeding {args.cases:,} open review cases …\n")
                report["seed"] = await _seed(settings, pool, client, staff, args.cases, out)
            open_cases = await pool.fetchval(
                "SELECT count(*) FROM review_cases WHERE state = 'open'"
            )
            report["open_cases"] = open_cases
            report["open_by_kind"] = {r["kind"]: r["n"] for r in await pool.fetch(
                "SELECT kind, count(*) AS n FROM review_cases WHERE state = 'open'"
                " GROUP BY kind ORDER BY kind")}  # fmt: skip
            await _sign_in(client, staff.me.token)
            walk = await _walk(client, open_cases, out, strict=not args.url)
            samples = await _kinds(pool, walk, rng)
            if seed:
                await _check_shapes(client, samples)
            count = args.requests * len(samples)
            out.write(f"measuring {len(samples)} kinds x {args.requests} requests ({count:,}),"
                      f" {args.concurrency} at a time, interleaved …\n")  # fmt: skip
            seconds = await _measure(client, samples, args.requests, args.concurrency, out)
        report["walk"] = {k: v for k, v in walk.items() if k != "urls"}
        report["seconds"] = round(seconds, 1)
        report["pages"] = _pages(samples)
        report["plans"] = await _plans(settings, staff, walk, out)
    finally:
        await pool.close()
    report["targets"] = _targets(report["pages"])
    _print(report, out)
    if args.out:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = Path(args.out) / f"console-{stamp}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        out.write(f"\nwrote {target}\n")
    errors = sum(sum(p["errors"].values()) for p in report["pages"].values())
    return 0 if errors == 0 else 1


def _pages(samples: dict[str, Samples]) -> dict[str, Any]:
    pages: dict[str, Any] = {}
    for name, s in samples.items():
        pages[name] = {"group": s.group, "distinct_urls": len(s.urls), "n": len(s.client),
                       "errors": dict(s.errors), "client": _quantiles(s.client),
                       "server": _quantiles(s.server)}  # fmt: skip
    static = pages["baseline: static file"]["client"]
    health = pages["baseline: /health/live"]["client"]
    for page in pages.values():
        client = page["client"]
        if client is None:
            continue
        page["ratio"] = {
            f"{q}_to_{base_name}": round(client[f"{q}_ms"] / base[f"{q}_ms"], 1)
            for base_name, base in (("static", static), ("health", health))
            if base is not None
            for q in ("p50", "p95")
        }
    return pages


def _targets(pages: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for group, limit in TARGETS.items():
        worst = max(
            (p["server"]["p95_ms"] for p in pages.values() if p["group"] == group and p["server"]),
            default=None,
        )
        found[f"{group} page p95 server time <= {limit:g} ms"] = {
            "worst_p95_ms": worst, "met": worst is not None and worst <= limit,
        }  # fmt: skip
    return found


def _print(report: dict[str, Any], out: TextIO) -> None:
    out.write(f"\ndataex bench console: {report['open_cases']:,} open cases "
              f"({', '.join(f'{k} {v:,}' for k, v in report['open_by_kind'].items())}),"
              f" pages of {PAGE}; {report['config']['requests_per_kind']} requests per kind,"
              f" {report['config']['concurrency']} at a time\n\n")  # fmt: skip
    header = (
        f"{'page':<40}{'n':>6}  {'client p50':>10}{'p95':>8}{'p99':>8}  "
        f"{'server p50':>10}{'p95':>8}{'p99':>8}  {'p95 ÷ static':>12}{'÷ health':>9}"
    )
    out.write(header + "\n" + "-" * len(header) + "\n")
    for name, page in report["pages"].items():
        c, s, r = page["client"] or {}, page["server"] or {}, page.get("ratio", {})

        def cell(d: dict[str, float], key: str, width: int) -> str:
            return f"{d[key]:>{width}.1f}" if key in d else f"{'-':>{width}}"

        errors = sum(page["errors"].values())
        out.write(
            f"{name:<40}{page['n']:>6}  {cell(c, 'p50_ms', 10)}{cell(c, 'p95_ms', 8)}"
            f"{cell(c, 'p99_ms', 8)}  {cell(s, 'p50_ms', 10)}{cell(s, 'p95_ms', 8)}"
            f"{cell(s, 'p99_ms', 8)}  {cell(r, 'p95_to_static', 12)}{cell(r, 'p95_to_health', 9)}"
            + (f"  ({errors} errors: {page['errors']})" if errors else "")
            + "\n"
        )
    out.write("(ms; server: the page's own Server-Timing; ratios: client p95 ÷ the baseline's)\n\n")
    for name, target in report["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        out.write(f"target {name}: {verdict} (worst p95 {target['worst_p95_ms']} ms)\n")
    out.write("\nthe queue's statement in PostgreSQL (EXPLAIN ANALYZE; pages of 50):\n")
    for name, entry in report["plans"].items():
        out.write(f"  {name}: {_plan_note(entry)}\n")
    for name, entry in report["plans"].items():
        if name.startswith(("deep page", f"rule={COMMON_RULE}", f"rule={RARE_RULE}")):
            out.write(f"\nplan, {name} (custom):\n  " + "\n  ".join(entry["custom"]["plan"]) + "\n")
