"""Group commit of orders: the queue's rules (placed on real PostgreSQL: tests/integration)."""

from __future__ import annotations

import asyncio

import pytest

from contracts.orders.group import Job, OrderGroup


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
