"""A compute job's states and its one transition table (the compute room's aggregate).

``queued`` → ``running`` → ``checking_output`` → ``succeeded``; or it ends ``failed_algorithm``
(the program exited non-zero), ``failed_platform`` (the exchange failed: the buyer is charged
nothing), ``timed_out`` (the wall-clock limit), ``limit_exceeded`` (memory, processes or output;
which one is a column), ``output_rejected`` (the output is not an aggregate: the reason is a
column) or ``cancelled`` (by the buyer, while queued). A runner that dies mid-job leaves it
``running``; the job is taken again (``requeue``) at most `MAX_ATTEMPTS` times, then fails as
``failed_platform``. Every step is a CloudEvent ``dx.job.<state>``.
"""

from __future__ import annotations

from typing import Final, Literal

from exchange.platform.events import JobState
from exchange.platform.states import StateMachine

JobAction = Literal[
    "start", "check", "succeed", "fail_algorithm", "fail_platform", "time_out", "exceed",
    "reject_output", "cancel", "requeue",
]  # fmt: skip
LimitKind = Literal["memory", "pids", "output", "cpu"]
MAX_ATTEMPTS: Final = 2

_ENDINGS: Final[dict[JobAction, JobState]] = {
    "fail_algorithm": "failed_algorithm",
    "fail_platform": "failed_platform",
    "time_out": "timed_out",
    "exceed": "limit_exceeded",
}

JOB: Final[StateMachine[JobState, JobAction]] = StateMachine(
    aggregate="job",
    states=JobState,
    transitions={
        "queued": {"start": "running", "cancel": "cancelled", "fail_platform": "failed_platform"},
        "running": {"check": "checking_output", "requeue": "queued", **_ENDINGS},
        "checking_output": {
            "succeed": "succeeded",
            "reject_output": "output_rejected",
            "fail_platform": "failed_platform",
        },
        "succeeded": {},
        "failed_algorithm": {},
        "failed_platform": {},
        "timed_out": {},
        "limit_exceeded": {},
        "output_rejected": {},
        "cancelled": {},
    },
    internal=frozenset(set(_ENDINGS) | {"start", "check", "succeed", "reject_output", "requeue"}),
)
FINAL: Final = frozenset(s for s, row in JOB.transitions.items() if not row)
