"""Group commit of orders: the queue's rules, and groups placed on real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from contracts.orders.group import Job, OrderGroup
from contracts.orders.schemas import Order, OrderCreate
from contracts.orders.service import OrderService
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal
from exchange.platform.errors import InvalidInput, NotFound
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import bearer
from tests.kit.documents import DEIDENTIFIED_PI, metadata
from tests.kit.market import list_product, order_body, standing_offer


class Recorder:
    """Runners that record the groups they were given; a group of orders "fails" when asked."""

    def __init__(self, fail_groups: bool = False) -> None:
        self.groups: list[list[str]] = []
        self.alone: list[str] = []
        self.fail_groups = fail_groups
        self.gate = asyncio.Event()

    async def together(self, jobs: list[Job]) -> list[object]:
        self.groups.append([job.args[0] for job in jobs])
        await self.gate.wait()
        if self.fail_groups:
            raise RuntimeError("the group's transaction failed")
        return [
            ValueError(job.args[0]) if job.args[0].startswith("bad") else job.args[0].upper()
            for job in jobs
        ]

    async def place_alone(self, job: Job) -> object:
        self.alone.append(job.args[0])
        await self.gate.wait()
        if job.args[0].startswith("bad"):
            raise ValueError(job.args[0])
        return job.args[0].upper()


def job(name: str, key: str | None = None) -> Job:
    return Job(("org", key) if key else None, (name,))


async def test_orders_arriving_while_a_group_runs_form_the_next_group() -> None:
    group, runner = OrderGroup(size=3, concurrency=1), Recorder()
    first = asyncio.ensure_future(group.place(job("a"), runner.together, runner.place_alone))
    await asyncio.sleep(0)
    rest = [
        asyncio.ensure_future(group.place(job(n), runner.together, runner.place_alone))
        for n in ("b", "c", "bad", "d")
    ]
    await asyncio.sleep(0)
    assert runner.alone == ["a"] and runner.groups == []  # nothing waiting: at once, alone
    runner.gate.set()
    assert await first == "A"
    assert [await task for task in rest[:2]] == ["B", "C"]
    with pytest.raises(ValueError, match="bad"):  # its own error; the others are placed
        await rest[2]
    assert await rest[3] == "D"
    # At most `size` in a group, in arrival order; the rest form the next one (alone here).
    assert runner.groups == [["b", "c", "bad"]] and runner.alone == ["a", "d"]
    assert (group.groups, group.grouped, group.open) == (1, 3, 0)


async def test_a_second_group_starts_only_when_enough_orders_wait() -> None:
    group, runner = OrderGroup(size=8, concurrency=2, spill=3), Recorder()
    first = asyncio.ensure_future(group.place(job("a"), runner.together, runner.place_alone))
    await asyncio.sleep(0)
    tasks = []
    for name in ("b", "c"):
        tasks.append(
            asyncio.ensure_future(group.place(job(name), runner.together, runner.place_alone))
        )
        await asyncio.sleep(0)
    assert group.open == 1 and runner.groups == []  # two waiting: they wait for "a"'s group
    tasks.append(asyncio.ensure_future(group.place(job("d"), runner.together, runner.place_alone)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the second group's task runs
    assert group.open == 2 and runner.groups == [["b", "c", "d"]]  # three waiting: a second
    runner.gate.set()
    assert await asyncio.gather(first, *tasks) == ["A", "B", "C", "D"]
    assert group.open == 0


async def test_one_key_is_never_twice_in_a_group() -> None:
    group, runner = OrderGroup(size=8, concurrency=1), Recorder()
    blocker = asyncio.ensure_future(group.place(job("x"), runner.together, runner.place_alone))
    await asyncio.sleep(0)
    tasks = [
        asyncio.ensure_future(group.place(job(n, key), runner.together, runner.place_alone))
        for n, key in (("a", "k1"), ("b", "k1"), ("c", "k2"), ("d", "k1"))
    ]
    await asyncio.sleep(0)  # all waiting
    runner.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert runner.groups == [["a", "c"]]  # b and d share a's key: later, one at a time
    assert runner.alone == ["x", "b", "d"]


async def test_a_failed_group_places_each_of_its_orders_alone() -> None:
    group, runner = OrderGroup(size=8, concurrency=1), Recorder(fail_groups=True)
    blocker = asyncio.ensure_future(group.place(job("x"), runner.together, runner.place_alone))
    await asyncio.sleep(0)
    tasks = [
        asyncio.ensure_future(group.place(job(n), runner.together, runner.place_alone))
        for n in ("a", "bad", "b")
    ]
    await asyncio.sleep(0)  # all waiting
    runner.gate.set()
    results = await asyncio.gather(blocker, *tasks, return_exceptions=True)
    assert results[0] == "X" and results[1] == "A" and results[3] == "B"
    assert isinstance(results[2], ValueError)
    assert runner.groups == [["a", "bad", "b"]]
    assert sorted(runner.alone) == ["a", "b", "bad", "x"]
    assert group.groups == 0 and group.open == 0


async def test_an_order_whose_request_went_away_is_not_placed() -> None:
    group, runner = OrderGroup(size=8, concurrency=1), Recorder()
    blocker = asyncio.ensure_future(group.place(job("x"), runner.together, runner.place_alone))
    await asyncio.sleep(0)
    gone = asyncio.ensure_future(group.place(job("gone"), runner.together, runner.place_alone))
    kept = [
        asyncio.ensure_future(group.place(job(n), runner.together, runner.place_alone))
        for n in ("a", "b")
    ]
    await asyncio.sleep(0)
    gone.cancel()
    runner.gate.set()
    assert await asyncio.gather(blocker, *kept) == ["X", "A", "B"]
    assert runner.groups == [["a", "b"]] and "gone" not in runner.alone


async def _principal(client, token: str) -> Principal:
    me = (await client.get("/v1/me", headers=bearer(token))).json()
    return Principal(
        org_id=uuid.UUID(me["organisation"]["id"]),
        org_name=me["organisation"]["name"],
        token_id=uuid.UUID(me["token_id"]),
        roles=frozenset({"buyer"}),
        is_operator=False,
    )


async def test_a_group_judges_each_order_and_counts_its_own_exports(
    client, trade, pool, clock, settings
):
    """One transaction for several orders: a refused order gets its own answer and writes
    nothing, and an export executed earlier in the group counts towards the next order's
    threshold although it is not yet written."""
    product_id = await list_product(
        client, trade, metadata(classification__personal_info=DEIDENTIFIED_PI), evidence=("CAU-02",)
    )
    await standing_offer(client, trade, product_id)
    assert (
        await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    ).status_code == 201
    principal = await _principal(client, trade["buyer"])
    group = OrderGroup(concurrency=1)
    service = OrderService(
        pool, clock, settings, KeyRing(load_master_key(settings.state_dir)), group=group
    )

    def place(product: str = product_id, **terms: object) -> asyncio.Future[Order]:
        data = msgspec.convert(order_body(product, **terms), OrderCreate)
        return asyncio.ensure_future(service.place(Actor.of(principal, None), principal, data))

    first = place()  # alone: nothing else was waiting
    await asyncio.sleep(0)
    together = [
        place(buyer_country="SG", pi_subject_count=60_000),
        place(purpose="marketing"),
        place(str(uuid.uuid4())),
        place(buyer_country="SG", pi_subject_count=40_000),
    ]
    results = await asyncio.gather(first, *together, return_exceptions=True)
    assert (group.groups, group.grouped) == (1, 4)
    alone, export, mismatch, missing, second_export = results
    assert isinstance(alone, Order) and alone.state == "executed"
    assert isinstance(export, Order) and export.state == "executed"
    assert export.policy["cross_border"]["route"] == "exempt"
    assert (
        isinstance(mismatch, InvalidInput)
        and mismatch.extensions["mismatches"][0]["term"] == "purpose"
    )
    assert isinstance(missing, NotFound)
    # 60,000 executed earlier in this group + 40,000 = 100,000: CAU-05, to review.
    assert isinstance(second_export, Order) and second_export.state == "in_review"
    assert second_export.policy["cross_border"]["route"] == "standard_contract_or_certification"
    case = await pool.fetchrow(
        "SELECT kind, rules FROM review_cases WHERE id = $1", second_export.review_case_id
    )
    assert case["kind"] == "order" and list(case["rules"]) == ["CAU-05"]
    rows = await pool.fetch(
        "SELECT id, state FROM orders WHERE buyer_org_id = $1 ORDER BY created_at", principal.org_id
    )
    assert {r["id"]: r["state"] for r in rows} == {
        alone.id: "executed",
        export.id: "executed",
        second_export.id: "in_review",
    }
    contracts = await pool.fetchval(
        "SELECT count(*) FROM trade_contracts WHERE order_id = ANY($1::uuid[])",
        [alone.id, export.id, second_export.id],
    )
    events = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE subject = $1 AND convert_from(payload, 'UTF8')::jsonb"
        " -> 'data' ->> 'order_id'"
        " = ANY($2::text[])",
        settings.subject("trade", "executed"), [str(alone.id), str(export.id)],
    )  # fmt: skip
    assert (contracts, events) == (2, 2)
