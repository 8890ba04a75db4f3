"""Stage 2 scoring: a closed window's totals against its cohort's baselines.

Scoring is kept apart from deciding severity and from the alert lifecycle. For each signal
this module gives a :class:`Decision`: the calibrated score (standard units, the same scale for
every signal), whether it crosses the signal's threshold in its direction, and what was observed
and expected. A fine cohort still warming up is scored against its parent's baseline; volume
has no such fallback (a tenant's traffic is not its app's). Baselines learn only from windows
that were not anomalous for that signal.
"""

from __future__ import annotations

from math import expm1
from typing import NamedTuple

from baselines import fading_factor
from baselines.quantity import QuantityBaseline
from baselines.rate import RateBaseline
from baselines.volume import VolumeBaseline
from detector.config import Config
from detector.partials import SCALE, Partial
from detector.signals import EVENTS, Layout, Signal, matches

__all__ = ["CohortModel", "Decision", "Scorer"]

Baseline = RateBaseline | QuantityBaseline | VolumeBaseline
VERSION_KEEP = 8
#: A rate's slow horizon does not learn while the fast one is this far from it.
SLOW_FREEZE = 2.0
SCALE2 = SCALE * SCALE


def _magnitude(c: tuple[float, bool, float]) -> float:
    return abs(c[0])


class Decision(NamedTuple):
    signal: str
    score: float
    observed: float
    expected: float | None
    threshold: float
    anomalous: bool
    events: int


#: A version value is "known" (part of the baseline) once it has carried about three
#: normal windows' worth of the cohort's traffic; newer values are rollback candidates.
KNOWN_WEIGHT = 3.0


class CohortModel:
    """Everything stage 2 remembers about one cohort (small and bounded)."""

    __slots__ = ("baselines", "level", "persist", "recent", "versions", "windows")

    def __init__(self, level: int) -> None:
        self.level = level
        self.baselines: dict[str, Baseline] = {}
        self.persist: dict[str, int] = {}           # consecutive anomalous windows
        # The previous one or two consecutive windows' totals per signal (multi-window scores).
        self.recent: dict[str, list[tuple[int, float, float, float]]] = {}
        # Per version field: value -> [decayed weight, window first learned].
        self.versions: list[dict[str, list[float]]] = [{}, {}, {}]
        self.windows = 0

    def expects_traffic(self, t: float) -> bool:
        """Whether an empty window is news: below ~2 expected events, silence is no evidence
        (P(0 | 2) = 0.14), so rare cohorts are not walked every window."""
        b = self.baselines.get("volume")
        return b is not None and b.n >= 5 and b.expected(t) >= 2.0  # type: ignore[call-arg]

    def learn_versions(self, versions: dict[str, int], window: int) -> None:
        """Remember which version values this cohort normally sees, and since when."""
        total = sum(versions.values()) or 1
        for i, known in enumerate(self.versions):
            for entry in known.values():
                entry[0] *= 0.98
            for combo, n in versions.items():
                v = combo.split("\x1f")[i]
                entry = known.get(v)
                if entry is None:
                    known[v] = [n / total, window]
                else:
                    entry[0] += n / total
            if len(known) > VERSION_KEEP:
                keep = sorted(known.items(), key=lambda kv: (-kv[1][0], kv[0]))[:VERSION_KEEP]
                known.clear()
                known.update(keep)


class Scorer:
    """Scores a window's partial for one cohort and teaches its baselines."""

    def __init__(self, config: Config) -> None:
        b = config.baselines
        self.fast = fading_factor(b.fast_half_life_windows)
        self.slow = fading_factor(b.slow_half_life_windows)
        self.bins = b.season_bins
        self.period = b.season_period_seconds
        self.max_disp = b.max_dispersion
        self.warmup = b.warmup_windows
        self.own_after = max(config.cohorts.own_baseline_after_windows, self.warmup)
        self.clear_ratio = config.alerting.clear_ratio
        self.size = config.windows.size_seconds
        self.levels = config.cohorts.levels
        self.layout = Layout(tuple(config.input.safety_labels))
        self.signals: tuple[Signal, ...] = tuple(
            s for s in self.layout.signals if config.signal(s.name).enabled
        )
        self.config = config
        self._thresholds: dict[tuple[int, tuple[str, ...]], dict[str, float]] = {}
        # Per signal, what scoring needs, looked up once rather than per cohort and window.
        self._specs = [(s, config.signal(s.name).direction, config.signal(s.name).min_count)
                       for s in self.signals]

    # -- thresholds -------------------------------------------------------------------------
    def thresholds(self, level: int, cohort: tuple[str, ...]) -> dict[str, float]:
        """Per-signal thresholds of a cohort, with the config's overrides applied (cached)."""
        key = (level, cohort)
        got = self._thresholds.get(key)
        if got is None:
            values = dict(zip(self.levels[level], cohort, strict=True))
            got = {}
            for s in self.signals:
                t = self.config.signal(s.name).threshold
                for ov in self.config.overrides:
                    hit = all(values.get(f) == v for f, v in ov.match.items())
                    if hit and matches(s.name, ov.signals):
                        t *= ov.threshold_factor
                got[s.name] = t
            if len(self._thresholds) < 100_000:   # bounded cache
                self._thresholds[key] = got
        return got

    # -- baselines --------------------------------------------------------------------------
    def _new(self, sig: Signal) -> Baseline:
        if sig.kind == "rate":
            return RateBaseline(self.fast, self.slow, self.max_disp)
        if sig.kind == "quantity":
            return QuantityBaseline(self.fast, self.slow)
        return VolumeBaseline(self.fast, self.slow, self.bins, self.period, self.max_disp)

    def _baseline(self, sig: Signal, own: CohortModel, parent: CohortModel | None
                  ) -> Baseline | None:
        b = own.baselines.get(sig.name)
        need = self.warmup if own.level == 0 else self.own_after
        if b is not None and b.n >= need:
            return b
        if sig.kind == "volume" or parent is None:
            return b if b is not None and b.n >= self.warmup else None
        pb = parent.baselines.get(sig.name)
        return pb if pb is not None and pb.n >= self.warmup else None

    # -- scoring ----------------------------------------------------------------------------
    @staticmethod
    def _candidates(b: Baseline, kind: str, x: float, y: float, q: float, k: float
                    ) -> list[tuple[float, bool, float]]:
        """(score, from the slow horizon?, count) for both horizons."""
        if kind == "rate":
            zf, zs = b.score_one(x, y)  # type: ignore[call-arg]
        else:
            zf, zs = b.score_one(x, y, q)  # type: ignore[call-arg]
        return [(zf, False, k), (zs, True, k)]

    def score(self, p: Partial, own: CohortModel, parent: CohortModel | None,
              firing: frozenset[str] | set[str]) -> list[Decision]:
        """Decisions for every signal with data in this window (pure: learns nothing)."""
        c = p.counts
        t0 = p.window * self.size
        thr = self.thresholds(p.level, p.cohort)
        out: list[Decision] = []
        for sig, d, min_count in self._specs:
            name = sig.name
            if sig.kind == "volume":
                n = k = c[EVENTS]
            else:
                n = c[sig.num] if sig.kind == "quantity" else c[sig.den]
                if n <= 0:
                    continue
                k = c[sig.num]   # for a quantity: the number of values (min_count applies)
                if k == 0 and d == "up":
                    continue     # nothing happened: no score can be positive (the common case)
            b = self._baseline(sig, own, parent)
            if b is None:
                continue
            t = thr[name] * (self.clear_ratio if name in firing else 1.0)
            if sig.kind == "volume":
                zf, zs = b.score_one(k, t0)  # type: ignore[union-attr]
                cands = [(zf, False, k), (zs, True, k)]
                observed = k
            else:
                x, y, q = ((k, n, 0.0) if sig.kind == "rate"
                           else (n, c[sig.den] / SCALE, c[sig.sq] / SCALE2))
                cands = self._candidates(b, sig.kind, x, y, q, k)
                # Multi-window evidence: the last three consecutive windows together, so a
                # tenfold rise on a small cohort is not missed for want of counts in one.
                prev = own.recent.get(name)
                if prev and prev[-1][0] == p.window - 1:
                    for w, px, py, pq in prev:
                        if w >= p.window - 2:
                            x, y, q = x + px, y + py, q + pq
                    agg = self._candidates(b, sig.kind, x, y, q, x)  # x: the summed count
                    # ...but only while this window on its own leans the same way, so one
                    # bad window is not stretched into three windows of "persistence".
                    half = t / 2
                    agg = [a for a in agg
                           if (a[0] > 0 and max(cands)[0] >= half)
                           or (a[0] < 0 and min(cands)[0] <= -half)]
                    cands += agg
                # Two horizons apart: a slow ramp, in the fast horizon's decayed sums against
                # the slow rate; only while this window on its own leans that way (so the
                # alert resolves when the ramp is over) and only on the cohort's own baseline.
                if sig.flags and b is own.baselines.get(name):
                    lean = max(cands[:2], key=_magnitude)[0]   # this window alone
                    if abs(lean) >= t / 2:
                        zd = b.drift_score(k, n)  # type: ignore[union-attr]
                        if zd * lean > 0:
                            cands.append((zd, True, k))
                # Quantities are counted as log1p (tokens and latency are heavy-tailed) and
                # reported back as geometric means.
                observed = k / n if sig.kind == "rate" else expm1(c[sig.den] / SCALE / n)
            if d == "up":
                z, slow, kk = max(cands)
                hit = z >= t and kk >= min_count
            elif d == "down":
                z, slow, kk = min(cands)
                hit = z <= -t
            else:
                z, slow, kk = max(cands, key=_magnitude)
                hit = (z >= t and kk >= min_count) or z <= -t
            if sig.kind == "volume":
                expected = b.expected(t0, slow=slow)  # type: ignore[call-arg]
            elif sig.kind == "quantity":
                expected = expm1(b.expected(slow=slow))  # type: ignore[call-arg]
            else:
                expected = b.expected(slow=slow)  # type: ignore[call-arg]
            out.append(Decision(name, z, observed, expected, thr[name], hit, int(c[EVENTS])))
        return out

    def learn(self, p: Partial, own: CohortModel, decisions: list[Decision]) -> None:
        """Teach the cohort's baselines with this window, except the anomalous signals."""
        bad = {d.signal for d in decisions if d.anomalous}
        c = p.counts
        for sig in self.signals:
            name = sig.name
            kind = sig.kind
            n = c[EVENTS] if kind == "volume" else c[sig.num if kind == "quantity" else sig.den]
            if kind != "volume":
                if n <= 0:
                    own.recent.pop(name, None)
                else:
                    entry = ((p.window, c[sig.num], n, 0.0) if kind == "rate"
                             else (p.window, n, c[sig.den] / SCALE, c[sig.sq] / SCALE2))
                    prev = own.recent.get(name)
                    own.recent[name] = ([prev[-1], entry] if prev and prev[-1][0] == p.window - 1
                                        else [entry])
            if name in bad:
                own.persist[name] = own.persist.get(name, 0) + 1
                if kind != "quantity":   # a quantity learns it too, with bounded influence
                    continue
            else:
                own.persist.pop(name, None)
            if kind != "volume" and n <= 0:
                continue   # no data: nothing to learn, and no state to keep
            b = own.baselines.get(name)
            if b is None:
                b = own.baselines[name] = self._new(sig)
            if kind == "rate":
                k = c[sig.num]
                # The slow horizon stays out of it while the fast one drifts away from it.
                drifting = (sig.flags and b.n >= self.warmup
                            and abs(b.drift_score(k, n)) >= SLOW_FREEZE)  # type: ignore[union-attr]
                b.learn_one(k, n, slow=not drifting)  # type: ignore[call-arg]
            elif kind == "quantity":
                b.learn_one(n, c[sig.den] / SCALE, c[sig.sq] / SCALE2,  # type: ignore[call-arg]
                            anomalous=name in bad)
            else:
                b.learn_one(n, p.window * self.size)  # type: ignore[call-arg]
        if not bad:
            own.learn_versions(p.versions, p.window)
        own.windows += 1

