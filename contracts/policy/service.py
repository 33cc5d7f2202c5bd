"""Publishing list versions, evaluating under the current one, recording and replaying."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from contracts.policy import store
from contracts.policy.attributes import EvaluationDocument
from contracts.policy.evaluator import evaluate
from contracts.policy.rules import (
    POLICY_DIR,
    PolicyList,
    PolicyListError,
    bundled_versions,
    load_policy_list,
    parse_policy_list,
)
from contracts.policy.schemas import (
    Decision,
    DecisionChange,
    DecisionSnapshot,
    PolicyListDetail,
    PolicyListInfo,
    ReplayReport,
    RuleSummary,
)
from exchange.platform import metrics
from exchange.platform.audit import Actor, record
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import Conflict, FieldError, InvalidInput, NotFound, Unavailable

_REPLAY_PAGE = 500
# Published lists never change, so a compiled list is cached per (version, digest) per process.
_COMPILED: dict[tuple[str, str], PolicyList] = {}


def policy_errors(error: PolicyListError, field: str = "source") -> InvalidInput:
    return InvalidInput(
        f"the policy list is invalid ({len(error.issues)} problem(s))",
        errors=[
            FieldError(path=field, message=str(issue), source="body") for issue in error.issues
        ],
    )


def rule_summaries(policy: PolicyList) -> list[RuleSummary]:
    return [
        RuleSummary(
            id=r.id,
            list=r.list,
            scope=r.scope,
            title_zh=r.title_zh,
            title_en=r.title_en,
            basis=r.basis,
            four_eyes=r.four_eyes or r.four_eyes_when is not None,
        )
        for r in policy.rules
    ]


class PolicyService:
    """Lists are immutable once published, so compiled lists are cached by version."""

    def __init__(self, pool: asyncpg.Pool, clock: Clock) -> None:
        self.pool = pool
        self.clock = clock

    async def _compiled_from_row(self, row: asyncpg.Record) -> PolicyList:
        key = (row["version"], row["digest"])
        policy = _COMPILED.get(key)
        if policy is None:
            policy = parse_policy_list(row["source"], f"{row['version']}.toml")
            if policy.digest != row["digest"]:
                raise Unavailable(f"policy list {row['version']} no longer matches its digest")
            _COMPILED[key] = policy
        return policy

    async def current(self, conn: Executor | None = None) -> PolicyList:
        """The list in effect now. Inside a transaction pass its connection: never take a
        second pooled connection while holding one (a full pool would then wait forever)."""
        executor = conn or self.pool
        current = await executor.fetchrow(
            "SELECT version, digest FROM policy_lists WHERE effective_from <= $1"
            " ORDER BY effective_from DESC LIMIT 1",
            self.clock.now(),
        )
        if current is None:
            raise Unavailable(
                "no policy list is in effect yet: publish one (dataex policy publish)"
            )
        cached = _COMPILED.get((current["version"], current["digest"]))
        return cached or await self.get(current["version"], executor)

    async def compiled(self, conn: Executor, version: str, digest: str) -> PolicyList:
        """The list ``version`` whose digest the caller read already: from memory when known."""
        return _COMPILED.get((version, digest)) or await self.get(version, conn)

    async def get(self, version: str, conn: Executor | None = None) -> PolicyList:
        # A published version never changes (the table refuses UPDATE): look up only its
        # digest, and serve the compiled list from memory when it is known.
        executor = conn or self.pool
        digest = await executor.fetchval(
            "SELECT digest FROM policy_lists WHERE version = $1", version
        )
        cached = _COMPILED.get((version, digest)) if digest else None
        if cached is not None:
            return cached
        row = await store.get_row(executor, version)
        if row is None:
            raise NotFound(f"no published policy list {version}")
        return await self._compiled_from_row(row)

    async def detail(self, version: str) -> PolicyListDetail:
        now = self.clock.now()
        info = await store.get_info(self.pool, version, now)
        if info is None:
            raise NotFound(f"no published policy list {version}")
        policy = await self.get(version)
        return PolicyListDetail(info=info, rules=rule_summaries(policy), source=policy.source)

    async def infos(self) -> list[PolicyListInfo]:
        return await store.list_infos(self.pool, self.clock.now())

    async def publish(
        self, actor: Actor, source: str, effective_from: datetime | None, *, file: str = "source"
    ) -> tuple[PolicyListDetail, bool]:
        """Validate and store a list version; returns it and whether it was created now.

        Publishing the identical version again is a no-op. A version is immutable: other
        content under a published version number is a 409. It takes effect at
        ``effective_from`` (default: now), which must not be in the past and must follow
        every earlier version's.
        """
        try:
            policy = parse_policy_list(source, file)
        except PolicyListError as error:
            raise policy_errors(error) from error
        now = self.clock.now()
        when = effective_from or now
        if when.tzinfo is None:
            raise InvalidInput(
                "effective_from needs a time zone",
                errors=[FieldError(path="effective_from", message="naive time", source="body")],
            )
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE policy_lists IN SHARE ROW EXCLUSIVE MODE")
            existing = await store.get_row(conn, policy.version)
            if existing is not None and existing["digest"] != policy.digest:
                raise Conflict(
                    f"policy list {policy.version} is already published with digest"
                    f" {existing['digest']}; versions are immutable: publish a new version number",
                    extensions={"published_digest": existing["digest"], "digest": policy.digest},
                )
            if existing is not None:
                created = False  # the identical version again: nothing to do
            elif when < now and effective_from is not None:
                raise InvalidInput(
                    "effective_from is in the past: a list cannot take effect retroactively",
                    errors=[
                        FieldError(path="effective_from", message="in the past", source="body")
                    ],
                )
            elif (latest := await store.latest_effective_from(conn)) is not None and when <= latest:
                raise InvalidInput(
                    f"effective_from must be after {latest.isoformat()}, when the latest"
                    " published version takes effect",
                    errors=[
                        FieldError(
                            path="effective_from", message="not after the latest", source="body"
                        )
                    ],
                )
            else:
                created = True
                await self._insert(conn, actor, policy, when, now)
        return await self.detail(policy.version), created

    async def _insert(
        self, conn: Connection, actor: Actor, policy: PolicyList, when: datetime, now: datetime
    ) -> None:
        await store.insert_list(
            conn,
            version=policy.version,
            digest=policy.digest,
            title=policy.title,
            source=policy.source,
            document=policy.document,
            effective_from=when,
            published_at=now,
            published_by=actor.label,
        )
        await record(
            conn,
            actor,
            at=now,
            action="policy.published",
            subject_type="policy_list",
            subject_id=policy.version,
            after=policy.document,
            detail={
                "digest": policy.digest,
                "effective_from": when.isoformat(),
                "rules": [r.id for r in policy.rules],
            },
        )

    async def ensure_initial_list(self, actor: Actor) -> str | None:
        """Publish the first bundled list if none is published yet; returns its version if so."""
        if await store.latest_effective_from(self.pool) is not None:
            return None
        first = bundled_versions()[0]
        detail, created = await self.publish(
            actor, first.read_text(encoding="utf-8"), None, file=first.name
        )
        return detail.info.version if created else None

    async def evaluate(self, document: EvaluationDocument, version: str | None) -> Decision:
        policy = await (self.get(version) if version else self.current())
        return evaluate(document, policy)

    async def record(
        self,
        conn: Connection,
        *,
        subject_type: str,
        subject_id: str,
        document: EvaluationDocument,
        decision: Decision,
    ) -> int:
        """Store a decision about a listing or an order, inside the caller's transaction (and
        count it: `exchange.platform.metrics.count_decision`; a transaction that fails after
        this is rare enough not to be uncounted)."""
        decision_id = await store.insert_decision(
            conn,
            subject_type=subject_type,
            subject_id=subject_id,
            document=document,
            decision=decision,
            at=self.clock.now(),
        )
        metrics.count_decision(subject_type, decision.decision, (h.rule for h in decision.hits))
        return decision_id

    async def candidate(self, version: str | None, source: str | None) -> PolicyList:
        """The list a replay runs: a published version, a bundled file, or a candidate source."""
        if (version is None) == (source is None):
            raise InvalidInput(
                "give either version or source",
                errors=[
                    FieldError(
                        path="version", message="exactly one of version, source", source="body"
                    )
                ],
            )
        if source is not None:
            try:
                return parse_policy_list(source, "candidate")
            except PolicyListError as error:
                raise policy_errors(error) from error
        assert version is not None
        row = await store.get_row(self.pool, version)
        if row is not None:
            return await self._compiled_from_row(row)
        bundled = POLICY_DIR / f"{version}.toml"
        if bundled.exists():
            try:
                return load_policy_list(bundled)
            except PolicyListError as error:
                raise policy_errors(error, "version") from error
        raise NotFound(f"no policy list {version}, published or under schemas/policy")

    async def replay(self, policy: PolicyList) -> ReplayReport:
        """Re-evaluate every open listing and order under ``policy``; report what would change."""
        changed: list[DecisionChange] = []
        subjects = 0
        after: tuple[str, str] | None = None
        while True:
            rows = await store.open_subject_decisions(self.pool, after=after, limit=_REPLAY_PAGE)
            for row in rows:
                subjects += 1
                document = msgspec.convert(row["document"], EvaluationDocument)
                before = msgspec.convert(row["decision"], Decision)
                now = evaluate(document, policy)
                change = _change(row["subject_type"], row["subject_id"], before, now)
                if change is not None:
                    changed.append(change)
            if len(rows) < _REPLAY_PAGE:
                break
            after = (rows[-1]["subject_type"], rows[-1]["subject_id"])
        return ReplayReport(
            list_version=policy.version,
            list_digest=policy.digest,
            subjects=subjects,
            unchanged=subjects - len(changed),
            changed=changed,
        )


def _snapshot(decision: Decision) -> DecisionSnapshot:
    return DecisionSnapshot(
        decision=decision.decision,
        list_version=decision.list_version,
        rules=[hit.rule for hit in decision.hits],
    )


def _change(
    subject_type: str, subject_id: str, before: Decision, after: Decision
) -> DecisionChange | None:
    old, new = _snapshot(before), _snapshot(after)
    if old.decision == new.decision and old.rules == new.rules:
        return None
    return DecisionChange(
        subject_type=subject_type,
        subject_id=subject_id,
        before=old,
        after=new,
        rules_added=[rule for rule in new.rules if rule not in old.rules],
        rules_removed=[rule for rule in old.rules if rule not in new.rules],
    )
