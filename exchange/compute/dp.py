"""Aggregate queries under differential privacy: count, sum, mean and quantiles, computed by the
exchange with OpenDP 0.16 so the buyer sends no code and sees only noisy aggregates.

**The privacy unit is one row.** Neighbouring datasets differ by one row added or removed
(OpenDP's ``SymmetricDistance``, ``d_in = 1``). That protects an individual only if each
individual contributes at most one row, so the product manual must say whether it does; where
a person may have several rows, the guarantee is per row, not per person, and the manual must
say that instead.

**What is public.** The query, the bounds and category lists the manual declares, and
``max_rows`` (a public limit the exchange sets for the job, at or above the size the manual
declares). Nothing else about the data is released without noise: rows whose group value is not
a declared category, and rows whose value is missing, not a number or not finite, are dropped
silently (a count of them would itself be a statistic); values outside the bounds are clamped
by OpenDP's ``make_clamp``. A dataset with more than ``max_rows`` rows is refused before anything
is released (`DatasetTooLarge`): that reveals only that the public limit was wrong.

**One measurement per aggregate, from OpenDP** (never noise drawn here), each calibrated by
``binary_search_param`` so that its privacy map at ``d_in = 1`` is at most its share of ε:

- ``count``: ``make_count >> make_geometric`` (two-sided geometric, i.e. discrete Laplace).
- ``sum``: ``make_clamp >> make_bounded_float_checked_sum(size_limit=max_rows) >> make_laplace``.
  The sum needs no known dataset size under add/remove-one neighbours: OpenDP's float sum
  takes a size *limit* to bound its floating-point rounding, and ``max_rows`` is that limit.
- ``mean``: a noisy sum divided by a noisy count, each on half of ε (the first half takes the
  odd micro-ε). This is how OpenDP's own Polars ``.dp.mean()`` estimates a mean ("numerator and
  denominator separately, then their ratio"); it was chosen over the core API's other pattern
  (a DP count, then ``make_resize`` to it and a sized ``make_mean``) because its measurements do
  not depend on the data, so one calibration serves every group and the scales are public.
  The ratio is post-processing: the count is floored at 1 and the mean clamped to the bounds.
- ``quantile``: ``make_clamp >> make_private_quantile`` (quantile scores over a grid of
  `QUANTILE_GRID` candidates evenly spaced within the bounds, then report-noisy-max with
  exponential noise, OpenDP 0.16's successor of ``make_report_noisy_max_gumbel``); ε is split
  evenly across the quantiles asked for.

Counts and sums are released unbiased, so a small group's count may be negative.

**Groups.** Every combination of the group columns' declared categories is a group, released
whether or not any row falls in it, so the keys reveal nothing; a group column without declared
categories is refused. Each group gets the query's measurements on its own rows with the whole
ε: the groups are disjoint, so adding or removing one row changes one group only, and by
parallel composition the query's loss is that of one group. (This rests on the one-row privacy
unit above: with several rows per person, one person could touch several groups.)

**Exact accounting.** ε is counted in integer micro-ε (1 ε = 1,000,000 µε): a query's epsilon
and a grant's budgets must be multiples of 0.000001, a query's parts split its micro-ε exactly
(they sum to it), and each part is calibrated to the largest float not above its exact share,
then checked with rationals: the sum of the parts' OpenDP privacy maps (which OpenDP rounds up)
is at most the query's epsilon. Budgets are stored and compared as integers, so a grant of ε 1
takes exactly ten jobs of ε 0.1, not eleven (in floats, 0.1 added ten times is 0.9999999999999999).

Not covered here: timing. Reading the rows takes time in proportion to their number; the job
runner should not report fine-grained durations to the buyer.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Final, Literal

import msgspec
from msgspec import Meta

from exchange.platform.canonical import canonical_json
from exchange.platform.errors import DataexError, InvalidInput

MICRO: Final = 1_000_000  # micro-ε per ε: budgets and shares are integers of these
MAX_GROUP_COLUMNS: Final = 3
MAX_GROUPS: Final = 10_000  # the product of the group columns' category counts
MAX_QUANTILES: Final = 10
QUANTILE_GRID: Final = 1_001  # candidates, lower to upper inclusive: steps of 1/1000 of the range

Aggregate = Literal["count", "sum", "mean", "quantile"]
Epsilon = Annotated[float, Meta(gt=0)]
ColumnName = Annotated[str, Meta(min_length=1, max_length=200)]
QuantileLevel = Annotated[float, Meta(gt=0, lt=1)]
Cell = str | int | float


class QueryRefused(InvalidInput):
    """The query cannot be answered under what the product manual declares."""

    code = "dp_query_refused"
    title = "The query cannot be answered under the product's declared bounds"


class DatasetTooLarge(DataexError):
    status = 413
    code = "dp_too_many_rows"
    title = "The data has more rows than the job may read"


class BudgetExceeded(DataexError):
    """The job would spend more ε than the grant allows (per job, or in total)."""

    status: ClassVar[int] = 403
    code: ClassVar[str] = "privacy_budget_exceeded"
    title: ClassVar[str] = "The grant's privacy budget does not cover this job"


class Query(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """An aggregate the buyer asks for; its canonical JSON (`canonical`) goes in the receipt."""

    aggregate: Aggregate
    column: ColumnName | None = None  # required except for count, which counts rows
    quantiles: Annotated[list[QuantileLevel], Meta(max_length=MAX_QUANTILES)] = []
    group_by: Annotated[list[ColumnName], Meta(max_length=MAX_GROUP_COLUMNS)] = []
    epsilon: Epsilon  # the whole ε this query spends, split across its parts

    def __post_init__(self) -> None:
        problem = _query_problem(self)
        if problem is not None:
            raise ValueError(problem)  # msgspec reports it as a ValidationError when decoding


class FieldBounds(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What the product manual declares of one column: the range a numeric column's values are
    clamped to, and for a column to group by, the public list of values it may take."""

    name: ColumnName
    lower: float | None = None
    upper: float | None = None
    categories: list[str] = []

    def __post_init__(self) -> None:
        if (self.lower is None) != (self.upper is None):
            raise ValueError(f"{self.name}: lower and upper are declared together")
        low, high = self.lower, self.upper
        if low is not None and high is not None and not (-math.inf < low < high < math.inf):
            raise ValueError(f"{self.name}: bounds must be finite with lower < upper")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"{self.name}: categories must be distinct")


class DpPart(msgspec.Struct, frozen=True, kw_only=True):
    """One OpenDP measurement of a query, applied to every group."""

    name: str  # "count", "sum", "quantile_0.5"
    epsilon: float  # its exact share of the query's ε (a whole number of micro-ε)
    loss: float  # OpenDP's privacy map at d_in = 1: the ε it actually spends, <= epsilon
    mechanism: str
    noise: str
    scale: float


class DpResult(msgspec.Struct, frozen=True, kw_only=True):
    """The released table, one row per group, and how it was made.

    ``mechanism``, ``noise`` and ``scale`` describe the part that makes the aggregate (the
    sum's for a mean, the first quantile's for quantiles); ``parts`` lists every measurement.
    """

    columns: list[str]
    rows: list[list[Cell]]
    epsilon: float
    mechanism: str
    noise: str
    scale: float
    parts: list[DpPart]


def canonical(query: Query) -> bytes:
    """RFC 8785 canonical JSON of ``query``, every field included: the bytes a receipt signs."""
    return canonical_json(query)


def run_query(
    query: Query,
    rows: Iterable[Mapping[str, str]],
    bounds: Mapping[str, FieldBounds],
    *,
    max_rows: int,
) -> DpResult:
    """Answer ``query`` over ``rows`` (CSV-like string mappings, read once, streaming) under the
    ``bounds`` the product manual declares (keyed by column name), spending exactly
    ``query.epsilon`` with the privacy unit of one row.

    Raises `QueryRefused` when the bounds do not support the query, `DatasetTooLarge` when
    ``rows`` holds more than ``max_rows`` rows (before anything is released). Charge the grant's
    budget (`charge`) before calling. `QueryRefused` depends on the query and the bounds alone,
    so its charge may be given back; `DatasetTooLarge` depends on the data (it outgrew its
    public limit), so that charge stands.
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    plan = _plan(query, bounds)
    parts = [_calibrate(part) for part in _parts(query, plan, max_rows)]
    total = sum((Fraction(part.loss) for part, _ in parts), Fraction(0))
    if total > Fraction(micro_epsilon(query.epsilon), MICRO):  # not an assert: -O drops those
        raise RuntimeError(
            f"the parts spend ε {float(total)}, more than the query's {query.epsilon}"
        )
    groups = _read(rows, plan, max_rows)
    measurements = [measurement for _, measurement in parts]
    release = (
        measurements[0] if len(measurements) == 1 else _opendp().c.make_composition(measurements)
    )
    out: list[list[Cell]] = []
    for key in plan.keys:
        outputs = release(groups[key])
        outputs = [outputs] if len(measurements) == 1 else list(outputs)
        out.append([*key, *_finish(query, plan, outputs)])
    main = parts[1][0] if query.aggregate == "mean" else parts[0][0]
    return DpResult(
        columns=[*query.group_by, *_aggregate_columns(query)],
        rows=out,
        epsilon=query.epsilon,
        mechanism=_MEAN_MECHANISM if query.aggregate == "mean" else main.mechanism,
        noise="laplace+geometric" if query.aggregate == "mean" else main.noise,
        scale=main.scale,
        parts=[part for part, _ in parts],
    )


def check_query(query: Query, bounds: Mapping[str, FieldBounds]) -> None:
    """`QueryRefused` now, before any ε is charged, when the bounds do not support ``query``
    (what `run_query` would refuse first)."""
    _plan(query, bounds)


def micro_epsilon(value: float) -> int:
    """``value`` (ε, as written: its shortest decimal form) in micro-ε; ValueError unless it is a
    non-negative, finite multiple of 0.000001."""
    try:
        micro = Decimal(repr(float(value))) * MICRO
    except InvalidOperation:
        raise ValueError(f"ε {value!r} is not a number") from None
    if not micro.is_finite() or micro < 0 or micro != micro.to_integral_value():
        raise ValueError(f"ε {value!r} must be a non-negative multiple of 0.000001")
    return int(micro)


def charge(spent: float, total: float, query_epsilon: float, per_job_max: float) -> float:
    """The grant's spent ε after a job of ``query_epsilon``, computed in integer micro-ε (so it
    is exact: 0.1 + 0.2 is 0.3), or `BudgetExceeded` naming the limit it would pass.

    Store the result (or better `charge_micro`'s integer) as the grant's new spent ε.
    """
    new = charge_micro(
        micro_epsilon(spent),
        micro_epsilon(total),
        micro_epsilon(query_epsilon),
        micro_epsilon(per_job_max),
    )
    return new / MICRO  # within 2^53 the nearest float, whose shortest form is the decimal


def charge_micro(spent: int, total: int, query: int, per_job_max: int) -> int:
    """`charge` on integers of micro-ε: the new spent, or `BudgetExceeded`."""
    if query <= 0:
        raise ValueError("a job spends a positive ε")
    numbers = {"spent": spent, "total": total, "requested": query, "per_job_max": per_job_max}
    extensions = {key: value / MICRO for key, value in numbers.items()}
    if query > per_job_max:
        raise BudgetExceeded(
            f"the job asks for ε {_show(query)}, more than the grant allows one job"
            f" (ε {_show(per_job_max)})",
            extensions=extensions,
        )
    if spent + query > total:
        raise BudgetExceeded(
            f"the job asks for ε {_show(query)} but the grant has ε {_show(max(total - spent, 0))}"
            f" left of its ε {_show(total)}",
            extensions=extensions,
        )
    return spent + query


# --- validation and planning -------------------------------------------------------------


def _query_problem(query: Query) -> str | None:
    """What is wrong with the query on its own (without the product's bounds), if anything."""
    if not 0 < query.epsilon < math.inf:
        return "epsilon must be positive and finite"
    try:
        micro_epsilon(query.epsilon)
    except ValueError as error:
        return f"epsilon: {error}"
    if query.aggregate == "count" and query.column is not None:
        return "count counts rows: it takes no column"
    if query.aggregate != "count" and query.column is None:
        return f"{query.aggregate} needs a column"
    if (query.aggregate == "quantile") != bool(query.quantiles):
        return "quantiles are given for a quantile query, and only for one"
    if not all(0 < level < 1 for level in query.quantiles):
        return "each quantile is strictly between 0 and 1"
    if len(set(query.quantiles)) != len(query.quantiles) or len(query.quantiles) > MAX_QUANTILES:
        return f"quantiles must be distinct, at most {MAX_QUANTILES}"
    if len(set(query.group_by)) != len(query.group_by) or len(query.group_by) > MAX_GROUP_COLUMNS:
        return f"group_by columns must be distinct, at most {MAX_GROUP_COLUMNS}"
    if query.column is not None and query.column in query.group_by:
        return "the aggregated column cannot also be a group_by column"
    return None


@dataclass(frozen=True, slots=True)
class _Plan:
    group_by: tuple[str, ...]
    keys: list[tuple[str, ...]]  # every combination of declared categories, in declared order
    column: str | None
    lower: float
    upper: float


def _plan(query: Query, bounds: Mapping[str, FieldBounds]) -> _Plan:
    categories: list[list[str]] = []
    for name in query.group_by:
        declared = _declared(bounds, name)
        if not declared.categories:
            raise QueryRefused(
                f"cannot group by {name!r}: the product manual declares no categories for it, and"
                " group keys taken from the data would reveal which values occur"
            )
        categories.append(declared.categories)
    groups = math.prod(len(values) for values in categories)
    if groups > MAX_GROUPS:
        raise QueryRefused(f"the group_by columns make {groups} groups; at most {MAX_GROUPS}")
    lower, upper = 0.0, 1.0  # unused for a count
    if query.column is not None:
        declared = _declared(bounds, query.column)
        if declared.lower is None or declared.upper is None:
            raise QueryRefused(
                f"cannot aggregate {query.column!r}: the product manual declares no bounds for it"
            )
        lower, upper = float(declared.lower), float(declared.upper)  # ints from Python callers
    keys = [tuple(key) for key in itertools.product(*categories)]
    return _Plan(tuple(query.group_by), keys, query.column, lower, upper)


def _declared(bounds: Mapping[str, FieldBounds], name: str) -> FieldBounds:
    declared = bounds.get(name)
    if declared is None:
        raise QueryRefused(f"the product manual declares no column {name!r}")
    if declared.name != name:
        raise ValueError(f"bounds[{name!r}] describes {declared.name!r}")
    return declared


def _read(
    rows: Iterable[Mapping[str, str]], plan: _Plan, max_rows: int
) -> dict[tuple[str, ...], list[Any]]:
    """Each group's values (``True`` per row for a count), dropping rows whose group value is not
    a declared category (compared exactly, as text) or whose value is not a finite number;
    `DatasetTooLarge` past ``max_rows`` rows."""
    groups: dict[tuple[str, ...], list[Any]] = {key: [] for key in plan.keys}
    # itemgetter is the fastest key (a third of the time of a tuple built per row); it gives
    # the value itself for one column, a tuple for several.
    key_of = operator.itemgetter(*plan.group_by) if plan.group_by else lambda _: ()
    lookup = {(key[0] if len(key) == 1 else key): values for key, values in groups.items()}
    column = plan.column
    for read, row in enumerate(rows, start=1):
        if read > max_rows:
            raise DatasetTooLarge(f"the data has more than {max_rows} rows, the job's limit")
        try:
            values = lookup.get(key_of(row))
            value = True if column is None else float(row[column])
        except (KeyError, TypeError, ValueError):  # missing, None (a short CSV line), not a number
            continue
        if values is not None and (value is True or math.isfinite(value)):
            values.append(value)
    return groups


# --- OpenDP measurements -----------------------------------------------------------------


@functools.cache
def _opendp() -> Any:
    """``opendp.prelude`` with the contrib features on, loaded on first use (receipts and
    budget checks need no OpenDP). Typed Any: its constructors are largely unannotated."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@dataclass(frozen=True, slots=True)
class _Part:
    name: str
    micro: int  # its share of the query's ε
    key: tuple[Any, ...]  # everything its privacy map depends on but the scale (cache key)
    mechanism: str
    noise: str
    build: Callable[[float], Any]  # noise scale -> OpenDP Measurement on one group's values
    # The same at less cost for the scale search, with the same privacy map (the final
    # measurement's map is checked all the same).
    probe: Callable[[float], Any] | None = None


def _parts(query: Query, plan: _Plan, max_rows: int) -> list[_Part]:
    dp = _opendp()
    floats = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    micro = micro_epsilon(query.epsilon)
    if query.aggregate == "count":
        rows = dp.vector_domain(dp.atom_domain(T=bool)), dp.symmetric_distance()
        return [_count(rows, micro)]
    if query.aggregate == "sum":
        return [_sum(floats, plan, max_rows, micro)]
    if query.aggregate == "mean":
        count_micro, sum_micro = _split(micro, 2)
        return [_count(floats, count_micro), _sum(floats, plan, max_rows, sum_micro)]
    shares = _split(micro, len(query.quantiles))
    pairs = zip(query.quantiles, shares, strict=True)
    return [_quantile(floats, plan, alpha, share) for alpha, share in pairs]


def _count(space: tuple[Any, Any], micro: int) -> _Part:
    dp = _opendp()
    return _Part(
        name="count",
        micro=micro,
        key=("count", str(space[0]), micro),
        mechanism="make_count >> make_geometric",
        noise="geometric",
        build=lambda scale: space >> dp.t.then_count() >> dp.m.then_geometric(scale=scale),
    )


def _sum(space: tuple[Any, Any], plan: _Plan, max_rows: int, micro: int) -> _Part:
    dp = _opendp()
    bounds = (plan.lower, plan.upper)
    try:
        summed = (
            space
            >> dp.t.then_clamp(bounds)
            >> dp.t.make_bounded_float_checked_sum(size_limit=max_rows, bounds=bounds)
        )
    except dp.OpenDPException as error:  # a sum of max_rows values could overflow
        raise QueryRefused(
            f"the bounds of {plan.column!r} are too wide to sum: {_one_line(error)}"
        ) from None
    return _Part(
        name="sum",
        micro=micro,
        key=("sum", bounds, max_rows, micro),
        mechanism="make_clamp >> make_bounded_float_checked_sum >> make_laplace",
        noise="laplace",
        build=lambda scale: summed >> dp.m.then_laplace(scale=scale),
    )


def _quantile(space: tuple[Any, Any], plan: _Plan, alpha: float, micro: int) -> _Part:
    dp = _opendp()
    lower, upper = plan.lower, plan.upper
    steps = QUANTILE_GRID - 1
    candidates = sorted({lower + (upper - lower) * i / steps for i in range(steps)} | {upper})
    clamped = space >> dp.t.then_clamp((lower, upper))

    def build(scale: float, candidates: list[float] = candidates) -> Any:
        return clamped >> dp.m.then_private_quantile(
            dp.max_divergence(), candidates=candidates, alpha=alpha, scale=scale
        )

    # The map depends on alpha and the scale, not on the candidates: search with two of them
    # (a thousand, converted for each of some sixty trial scales, took 0.3 s).
    return _Part(
        name=_quantile_column(alpha),
        micro=micro,
        key=("quantile", alpha, micro),
        mechanism="make_clamp >> make_private_quantile",
        noise="exponential",
        build=build,
        probe=lambda scale: build(scale, [lower, upper]),
    )


_SCALES: dict[tuple[Any, ...], float] = {}
_MAX_SCALES: Final = 4096


def _calibrate(part: _Part) -> tuple[DpPart, Any]:
    """The part's measurement at the smallest scale whose privacy map at d_in = 1 is at most its
    exact share of ε, and the record of it."""
    scale = _SCALES.get(part.key)
    if scale is None:
        # Some sixty constructions, 30-70 ms: found once per kind of part and share of ε.
        dp, target = _opendp(), _float_at_most(part.micro)
        try:
            scale = dp.binary_search_param(part.probe or part.build, d_in=1, d_out=target)
        except (dp.OpenDPException, ValueError):  # no float scale is large enough
            raise QueryRefused(
                f"no noise scale gives {part.name} ε {_show(part.micro)}: the bounds are too wide"
            ) from None
        if len(_SCALES) >= _MAX_SCALES:
            _SCALES.clear()
        _SCALES[part.key] = scale
    measurement = part.build(scale)
    loss = measurement.map(1)
    if Fraction(loss) > Fraction(part.micro, MICRO):  # a wrong cache key or probe: never release
        raise RuntimeError(f"{part.name} would spend ε {loss}, more than its {part.micro} µε")
    record = DpPart(
        name=part.name,
        epsilon=part.micro / MICRO,
        loss=loss,
        mechanism=part.mechanism,
        noise=part.noise,
        scale=scale,
    )
    return record, measurement


# --- ε arithmetic and the released table -------------------------------------------------


def _split(micro: int, parts: int) -> list[int]:
    """``micro`` in ``parts`` whole shares that sum to it exactly (the first take the rest)."""
    if micro < parts:
        raise QueryRefused(f"epsilon is too small to split across {parts} parts")
    share, rest = divmod(micro, parts)
    return [share + (1 if i < rest else 0) for i in range(parts)]


def _float_at_most(micro: int) -> float:
    """The largest float not above micro / 10^6 (division rounds to nearest, perhaps up)."""
    nearest = micro / MICRO
    return math.nextafter(nearest, 0.0) if Fraction(nearest) > Fraction(micro, MICRO) else nearest


def _show(micro: int) -> str:
    return format((Decimal(micro) / MICRO).normalize(), "f")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())  # OpenDP's messages come indented on a new line


_MEAN_MECHANISM: Final = (
    "noisy sum / noisy count: make_clamp >> make_bounded_float_checked_sum >> make_laplace,"
    " make_count >> make_geometric"
)


def _quantile_column(alpha: float) -> str:
    return f"quantile_{alpha!r}"


def _aggregate_columns(query: Query) -> list[str]:
    if query.aggregate == "quantile":
        return [_quantile_column(alpha) for alpha in query.quantiles]
    return [query.aggregate]


def _finish(query: Query, plan: _Plan, outputs: list[Any]) -> list[Cell]:
    """Post-processing (spends nothing): the mean's ratio, floored count, clamped."""
    if query.aggregate == "count":
        return [int(outputs[0])]
    if query.aggregate == "mean":
        count, total = outputs
        ratio = float(total) / max(int(count), 1)
        return [min(max(ratio, plan.lower), plan.upper)]
    return [float(value) for value in outputs]
