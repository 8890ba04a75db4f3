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
from detector.signals import EVENTS, Layout, Signal, matches
from detector.windows import Partial

__all__ = ["CohortModel", "Decision", "Scorer"]

Baseline = RateBaseline | QuantityBaseline | VolumeBaseline
VERSION_KEEP = 8


class Decision(NamedTuple):
    signal: str
    score: float
    observed: float
    expected: float | None
    threshold: float
    anomalous: bool
    events: int


class CohortModel:
    """Everything stage 2 remembers about one cohort (small and bounded)."""

    __slots__ = ("baselines", "level", "persist", "versions", "windows")

    def __init__(self, level: int) -> None:
        self.level = level
        self.baselines: dict[str, Baseline] = {}
        self.persist: dict[str, int] = {}           # consecutive anomalous windows
        self.versions: list[dict[str, float]] = [{}, {}, {}]  # known values, decayed weights
        self.windows = 0

    def expects_traffic(self, t: float) -> bool:
        """Whether an empty window is news: below ~2 expected events, silence is no evidence
        (P(0 | 2) = 0.14), so rare cohorts are not walked every window."""
        b = self.baselines.get("volume")
        return b is not None and b.n >= 5 and b.expected(t) >= 2.0  # type: ignore[call-arg]

    def learn_versions(self, versions: dict[str, int]) -> None:
        """Remember which version values this cohort normally sees."""
        total = sum(versions.values()) or 1
        for i, known in enumerate(self.versions):
            for k in known:
                known[k] *= 0.98
            for combo, n in versions.items():
                v = combo.split("\x1f")[i]
                known[v] = known.get(v, 0.0) + n / total
            if len(known) > VERSION_KEEP:
                keep = sorted(known.items(), key=lambda kv: (-kv[1], kv[0]))[:VERSION_KEEP]
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
    def score(self, p: Partial, own: CohortModel, parent: CohortModel | None,
              firing: frozenset[str] | set[str]) -> list[Decision]:
        """Decisions for every signal with data in this window (pure: learns nothing)."""
        c = p.counts
        t0 = p.window * self.size
        thr = self.thresholds(p.level, p.cohort)
        out: list[Decision] = []
        for sig in self.signals:
            name = sig.name
            if sig.kind == "volume":
                n = k = c[EVENTS]
            else:
                n = c[sig.num] if sig.kind == "quantity" else c[sig.den]
                if n <= 0:
                    continue
                k = c[sig.num]   # for a quantity: the number of values (min_count applies)
            b = self._baseline(sig, own, parent)
            if b is None:
                continue
            cfg = self.config.signal(name)
            t = thr[name] * (self.clear_ratio if name in firing else 1.0)
            if sig.kind == "rate":
                zf, zs = b.score_one(k, n)  # type: ignore[union-attr]
                observed = k / n
            elif sig.kind == "quantity":
                # Per-event values are counted as log1p (tokens and latency are heavy-tailed);
                # observed and expected are reported back as geometric means.
                zf, zs = b.score_one(n, c[sig.den], c[sig.sq])  # type: ignore[union-attr]
                observed = expm1(c[sig.den] / n)
            else:
                zf, zs = b.score_one(k, t0)  # type: ignore[union-attr]
                observed = k
            d = cfg.direction
            if d == "up":
                slow = zs > zf
                z = max(zf, zs)
                hit = z >= t and k >= cfg.min_count
            elif d == "down":
                slow = zs < zf
                z = min(zf, zs)
                hit = z <= -t
            else:
                slow = abs(zs) > abs(zf)
                z = zs if slow else zf
                hit = (z >= t and k >= cfg.min_count) or z <= -t
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
            if name in bad:
                own.persist[name] = own.persist.get(name, 0) + 1
                continue
            own.persist.pop(name, None)
            kind = sig.kind
            if kind != "volume" and c[sig.num if kind == "quantity" else sig.den] <= 0:
                continue   # no data: nothing to learn, and no state to keep
            b = own.baselines.get(name)
            if b is None:
                b = own.baselines[name] = self._new(sig)
            if kind == "rate":
                b.learn_one(c[sig.num], c[sig.den])  # type: ignore[call-arg]
            elif kind == "quantity":
                b.learn_one(c[sig.num], c[sig.den], c[sig.sq])  # type: ignore[call-arg]
            else:
                b.learn_one(c[EVENTS], p.window * self.size)  # type: ignore[call-arg]
        if not bad:
            own.learn_versions(p.versions)
        own.windows += 1

