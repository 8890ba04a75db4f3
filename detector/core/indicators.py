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
>>> z, seen, expected = gap(refusal, canary, prod, 1.0)
>>> z > 6, round(seen, 3), round(expected, 3)
(True, 0.2, 0.02)
>>> gap(refusal, prod, prod, 1.0)[0]
0.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import expm1, sqrt
from typing import Final

from baselines.poisson import poisson_score
from detector.config import Config
from detector.core.partials import SCALE, UNKNOWN, VERSION_FIELDS, Partial, Versions
from detector.core.scoring import CohortModel
from detector.core.signals import Signal, matches

__all__ = ["CANARY", "PRODUCTION", "canary_pairs", "churn", "compared", "gap", "version_gap",
           "widest"]

CANARY: Final = "canary"
PRODUCTION: Final = "production"
#: The prompt version's place in a partial's version combinations and a model's versions.
PROMPT: Final = VERSION_FIELDS.index("prompt_version")
#: The spread of a quantity's mean never counts as less than this (fixed-point log1p units
#: squared): two cohorts of identical values are no evidence of a gap between them.
_FLOOR2: Final = (0.05 * SCALE) ** 2
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


def gap(sig: Signal, canary: list[int], prod: list[int], dispersion: float
        ) -> tuple[float, float, float]:
    """(score, canary's value, production's value) of one signal between two windows' counts;
    a score of 0 when either side has no data. ``dispersion``: production's rate baseline's
    (1 for a quantity, or with no baseline)."""
    if sig.kind == "rate":
        kc, nc, kp, np_ = canary[sig.num], canary[sig.den], prod[sig.num], prod[sig.den]
        if nc <= 0 or np_ <= 0:
            return _QUIET
        rate = (kp + _PRIOR_K) / (np_ + _PRIOR_N)
        # Production's rate is counted too: the difference of the two counts varies by
        # 1 + nc / np times the canary count's own variance when the rates agree.
        z = poisson_score(kc, nc * rate) / sqrt(dispersion * (1.0 + nc / np_))
        return z, kc / nc, kp / np_
    nc, np_ = canary[sig.num], prod[sig.num]
    if nc <= 1 or np_ <= 1:
        return _QUIET
    mc, mp = canary[sig.den] / nc, prod[sig.den] / np_
    vc = max(canary[sig.sq] / nc - mc * mc, 0.0)
    vp = max(prod[sig.sq] / np_ - mp * mp, 0.0)
    z = (mc - mp) / sqrt(vc / nc + vp / np_ + _FLOOR2 / min(nc, np_))
    mc, mp = mc / SCALE, mp / SCALE
    return z, (expm1(mc) if sig.log else mc), (expm1(mp) if sig.log else mp)


def _enough(sig: Signal, canary: list[int], prod: list[int], min_count: float) -> bool:
    """The larger side's numerator (a rate's) or both sides' values (a quantity's) reach
    ``min_count``: a handful of events is no gap."""
    if sig.kind == "rate":
        return max(canary[sig.num], prod[sig.num]) >= min_count
    return min(canary[sig.num], prod[sig.num]) >= min_count


def canary_pairs(parts: dict[Cohort, Partial], levels: Sequence[Sequence[str]]
                 ) -> list[tuple[Cohort, Cohort]]:
    """(canary, production) cohort pairs of this window's partials at the coarsest level that
    has an environment, in cohort order."""
    level = next((i for i, lv in enumerate(levels) if "environment" in lv), None)
    if level is None:
        return []
    env = list(levels[level]).index("environment")
    out = []
    for key in sorted(parts):
        lv, cohort = key
        if lv == level and cohort[env] == CANARY:
            twin = (lv, (*cohort[:env], PRODUCTION, *cohort[env + 1:]))
            if twin in parts:
                out.append((key, twin))
    return out


def widest(signals: Sequence[Signal], canary: Partial, prod: Partial,
           dispersion: Callable[[str], float], min_count: float) -> tuple[Signal, float,
                                                                         float, float] | None:
    """The signal with the widest gap between the two partials (ties: the first signal)."""
    best: tuple[Signal, float, float, float] | None = None
    c, p = canary.counts, prod.counts
    for sig in signals:
        if not _enough(sig, c, p, min_count):
            continue
        z, seen, expected = gap(sig, c, p, dispersion(sig.name) if sig.kind == "rate" else 1.0)
        if best is None or abs(z) > abs(best[1]):
            best = (sig, z, seen, expected)
    return best


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
