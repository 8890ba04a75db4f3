"""Leading indicators stage 2 works out at a window's close from what it already holds: the
canary-versus-production gap (two cohorts' windows against each other) and prompt churn
(the prompt versions a cohort's version tracking first saw lately). Each gives
:class:`~detector.core.scoring.Decision` values that go through the alert lifecycle as any
signal's do; neither keeps state of its own.

The canary gap compares, for each app with both, the ``canary`` and the ``production``
cohort of the coarsest cohort level that has an environment, signal by signal, with the
count-aware scores the baselines use: a rate's canary count against production's rate (over
the production baseline's dispersion, and widened by production's own counting noise), a
quantity's canary mean against production's (a Welch score on the fixed-point log1p sums).
Both ways: the canary holding while production drifts is as much a gap as the reverse.

>>> from detector.core.signals import Layout
>>> lay = Layout(())
>>> refusal = next(s for s in lay.signals if s.name == "refusal_rate")
>>> canary, prod = [0] * lay.size, [0] * lay.size
>>> canary[refusal.den], canary[refusal.num] = 100, 20   # 20 %
>>> prod[refusal.den], prod[refusal.num] = 900, 18       # 2 %
>>> z, seen, expected = gap(refusal, totals(refusal, canary), totals(refusal, prod), 1.0)
>>> z > 6, round(seen, 3), round(expected, 3)
(True, 0.2, 0.02)
>>> gap(refusal, totals(refusal, prod), totals(refusal, prod), 1.0)[0]
0.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import expm1, sqrt
from typing import Final

from baselines.poisson import poisson_score
from baselines.quantity import _calibrate
from detector.config import Config
from detector.core.partials import ENVIRONMENT, SCALE, UNKNOWN, VERSION_FIELDS, Partial, Versions
from detector.core.scoring import CohortModel
from detector.core.signals import Signal, matches

__all__ = ["CANARY", "PRODUCTION", "Totals", "canary_pairs", "churn", "compared", "gap",
           "totals", "version_gap", "widest", "with_previous"]

CANARY: Final = "canary"
PRODUCTION: Final = "production"
#: The prompt version's place in a partial's version combinations and a model's versions.
PROMPT: Final = VERSION_FIELDS.index("prompt_version")
#: The spread of a quantity's values never counts as less than this (log1p units squared):
#: two cohorts of identical values are no evidence of a gap between them.
_FLOOR2: Final = 0.05 ** 2
#: A rate's count is taken as known to this prior, so a production rate of zero expects a
#: little, not nothing (one canary hit is then no gap).
_PRIOR_K, _PRIOR_N = 0.5, 1.0
_SCALE2: Final = float(SCALE * SCALE)
_QUIET: Final = (0.0, 0.0, 0.0)

Cohort = tuple[int, tuple[str, ...]]


def compared(signals: Sequence[Signal], config: Config) -> tuple[Signal, ...]:
    """The signals the canary gap compares: rates and quantities in the config's
    ``indicators.canary_signals`` (volume never: a canary takes a slice of the traffic)."""
    pats = config.indicators.canary_signals
    return tuple(s for s in signals if s.kind != "volume" and matches(s.name, pats))


Totals = tuple[float, float, float]


def totals(sig: Signal, counts: list[int]) -> Totals:
    """A window's totals of a signal as scoring keeps them (``CohortModel.recent``): a
    rate's (count, units, 0), a quantity's (values, sum, sum of squares) in log1p units."""
    if sig.kind == "rate":
        return float(counts[sig.num]), float(counts[sig.den]), 0.0
    return float(counts[sig.num]), counts[sig.den] / SCALE, counts[sig.sq] / _SCALE2


def with_previous(sig: Signal, t: Totals, model: CohortModel | None, window: int) -> Totals:
    """``t`` (window ``window``'s totals) plus the window before's, when the cohort's model
    kept it (scoring keeps the last two consecutive windows of each signal)."""
    prev = model.recent.get(sig.name) if model is not None else None
    for w, x, y, q in prev or ():
        if w == window - 1:
            return t[0] + x, t[1] + y, t[2] + q
    return t


def gap(sig: Signal, canary: Totals, prod: Totals, dispersion: float
        ) -> tuple[float, float, float]:
    """(score, canary's value, production's value) of one signal between two cohorts' totals
    (:func:`totals`); a score of 0 when either side has no data. ``dispersion``: production's
    rate baseline's (1 for a quantity, or with no baseline)."""
    if sig.kind == "rate":
        (kc, nc, _), (kp, np_, _) = canary, prod
        if nc <= 0 or np_ <= 0:
            return _QUIET
        rate = (kp + _PRIOR_K) / (np_ + _PRIOR_N)
        # Production's rate is counted too: the difference of the two counts varies by
        # 1 + nc / np times the canary count's own variance when the rates agree.
        z = poisson_score(kc, nc * rate) / sqrt(dispersion * (1.0 + nc / np_))
        return z, kc / nc, kp / np_
    (nc, sc, qc), (np_, sp, qp) = canary, prod
    if nc <= 1 or np_ <= 1:
        return _QUIET
    mc, mp = sc / nc, sp / np_
    vp = max(qp / np_ - mp * mp, _FLOOR2)
    # A small canary's own spread is a poor estimate (a few values can sit close together):
    # it counts as at least production's, and its mean's score as a Student t's of its size.
    vc = max(qc / nc - mc * mc, vp)
    z = _calibrate((mc - mp) / sqrt(vc / nc + vp / np_), max(nc - 1.0, 3.0))
    return z, (expm1(mc) if sig.log else mc), (expm1(mp) if sig.log else mp)


def canary_pairs(parts: dict[Cohort, Partial], levels: Sequence[Sequence[str]]
                 ) -> list[tuple[Cohort, Cohort]]:
    """(canary, production) cohort pairs of this window's partials at the coarsest level that
    has an environment, in cohort order."""
    level = next((i for i, lv in enumerate(levels) if ENVIRONMENT in lv), None)
    if level is None:
        return []
    env = list(levels[level]).index(ENVIRONMENT)
    out = []
    for key in sorted(parts):
        lv, cohort = key
        if lv == level and cohort[env] == CANARY:
            twin = (lv, (*cohort[:env], PRODUCTION, *cohort[env + 1:]))
            if twin in parts:
                out.append((key, twin))
    return out


def widest(signals: Sequence[Signal], canary: Partial, prod: Partial,
           models: tuple[CohortModel | None, CohortModel | None],
           dispersion: Callable[[str], float], min_count: float, threshold: float
           ) -> tuple[Signal, float, float, float] | None:
    """The signal with the widest gap between a canary's and its production's partials of
    one window (ties: the first signal): (signal, score, canary's value, production's).
    As scoring does, a window that leans half-way to ``threshold`` is also scored together
    with the window before (from the cohorts' ``models``, canary's and production's), which
    a small canary needs; ``min_count`` is met by the totals scored."""
    best: tuple[Signal, float, float, float] | None = None
    c, p = canary.counts, prod.counts
    w = canary.window
    for sig in signals:
        tc, tp = totals(sig, c), totals(sig, p)
        disp = dispersion(sig.name) if sig.kind == "rate" else 1.0
        found = gap(sig, tc, tp, disp)
        if abs(found[0]) >= threshold / 2:
            tc, tp = with_previous(sig, tc, models[0], w), with_previous(sig, tp, models[1], w)
            two = gap(sig, tc, tp, disp)
            if two[0] * found[0] > 0 and abs(two[0]) > abs(found[0]):
                found = two
            else:
                tc, tp = totals(sig, c), totals(sig, p)
        if not _enough(sig, tc, tp, min_count):
            continue
        if best is None or abs(found[0]) > abs(best[1]):
            best = (sig, *found)
    return best


def _enough(sig: Signal, canary: Totals, prod: Totals, min_count: float) -> bool:
    """The larger side's count (a rate's) or both sides' values (a quantity's) reach
    ``min_count``: a handful of events is no gap."""
    if sig.kind == "rate":
        return max(canary[0], prod[0]) >= min_count
    return min(canary[0], prod[0]) >= min_count


def _dominant(versions: dict[Versions, int], i: int) -> str | None:
    share: dict[str, int] = {}
    for combo, n in versions.items():
        if combo[i] != UNKNOWN:
            share[combo[i]] = share.get(combo[i], 0) + n
    return max(sorted(share), key=lambda v: share[v]) if share else None


def version_gap(canary: Partial, prod: Partial, order: Sequence[int]
                ) -> dict[str, str | None] | None:
    """The suspected change of a canary gap: the first version field (in ``order``) whose
    most common value differs between the two windows, production's as the baseline."""
    for i in order:
        now, base = _dominant(canary.versions, i), _dominant(prod.versions, i)
        if now is not None and now != base:
            return {"field": VERSION_FIELDS[i], "baseline": base, "now": now}
    return None


def churn(model: CohortModel, window: int, lookback: int) -> list[tuple[int, str]]:
    """A cohort's prompt changes: the prompt versions first seen within the last
    ``lookback`` windows, as (window first seen, version), newest first. The cohort's first
    versions are its start, not a change. Made from the version tracking the baselines keep
    (a few values per field, the rarest dropped first), so it keeps nothing of its own.

    >>> m = CohortModel(0)
    >>> for w, v in ((10, "v1"), (50, "v2"), (60, "v3")):
    ...     m.learn_versions({Versions("m", v, "p"): 100}, w)
    >>> churn(m, 70, 360), churn(m, 420, 360)
    ([(60, 'v3'), (50, 'v2')], [])
    """
    known = model.versions[PROMPT]
    if not known:
        return []
    first = min(e[1] for field in model.versions for e in field.values())
    return sorted(((int(e[1]), v) for v, e in known.items()
                   if v != UNKNOWN and e[1] > first and e[1] > window - lookback),
                  reverse=True)
