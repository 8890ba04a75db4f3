"""Stage 2 scoring: a closed window's totals against its cohort's baselines.

Scoring is kept apart from deciding severity and from the alert lifecycle. For each signal
this module gives a :class:`Decision`: the calibrated score (standard units, the same scale for
every signal), whether it crosses the signal's threshold in its direction, and what was observed
and expected. A fine cohort still warming up is scored against its parent's baseline; volume
has no such fallback (a tenant's traffic is not its app's). Beside the window's score, each
flag rate and quantity keeps sequential evidence (:mod:`baselines.sequential`). Anomalous
windows still teach the baselines, with bounded influence, and an anomalous episode that lasts
``baselines.adopt_after_windows`` is adopted as the new normal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import expm1
from operator import itemgetter
from typing import Any, Final, NamedTuple

from baselines import fading_factor
from baselines.quantity import QuantityBaseline, new_quantity
from baselines.rate import PLAIN, TWIN, WITH_DATA, RateBaseline, new_rate
from baselines.sequential import RISE_MIN, Z_QUIET, ZEROS, Cusum, nats_for, settle
from baselines.volume import VolumeBaseline
from detector.config import Config
from detector.core.attribution import Trail
from detector.core.partials import SCALE, Partial, Versions
from detector.core.signals import EVENTS, Signal, layout_of, matches

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
    #: The sequential evidence (CUSUM) in standard units: + for a rise, − for a fall.
    evidence: float = 0.0
    #: The evidence reached the threshold: a shift confirmed over several windows.
    confirmed: bool = False


_IDLE = Cusum()
_ANOMALOUS: Final = itemgetter(5)   # Decision.anomalous
_NEW: Final[Callable[..., Decision]] = tuple.__new__

#: A version value is "known" (part of the baseline) once it has carried about three
#: normal windows' worth of the cohort's traffic; newer values are rollback candidates.
KNOWN_WEIGHT = 3.0


class CohortModel:
    """Everything stage 2 remembers about one cohort (small and bounded)."""

    __slots__ = ("baselines", "episodes", "level", "persist", "rebased", "recent", "seq",
                 "seq_next", "trail", "versions", "windows")

    def __init__(self, level: int) -> None:
        self.level = level
        self.baselines: dict[str, Baseline] = {}
        self.persist: dict[str, int] = {}           # consecutive anomalous windows
        # Sequential evidence per signal, and what this window's scoring would make of it
        # (scoring is pure; learning commits it).
        self.seq: dict[str, Cusum] = {}
        self.seq_next: dict[str, tuple[Sequence[float], float]] = {}
        # An anomalous episode per signal: [first window, last anomalous window, windows,
        # sum x, sum y, sum q] of the windows it judged anomalous (what adoption takes on).
        self.episodes: dict[str, list[float]] = {}
        # Per signal, the window of the config's last forced re-baseline applied.
        self.rebased: dict[str, int] = {}
        # The previous one or two consecutive windows' totals per signal (multi-window scores).
        self.recent: dict[str, list[tuple[int, float, float, float]]] = {}
        # Per version field: value -> [decayed weight, window first learned].
        self.versions: list[dict[str, list[float]]] = [{}, {}, {}]
        self.windows = 0
        # Per-value counters, decayed, for attribution (detector.core.attribution).
        self.trail: Trail | None = None

    def expects_traffic(self, t: float) -> bool:
        """Whether an empty window is news: below ~2 expected events, silence is no evidence
        (P(0 | 2) = 0.14), so rare cohorts are not walked every window."""
        b: Any = self.baselines.get("volume")   # a VolumeBaseline (by its name)
        return b is not None and b.n >= 5 and b.expected(t) >= 2.0

    def learn_versions(self, versions: dict[Versions, int], window: int) -> None:
        """Remember which version values this cohort normally sees, and since when."""
        total = sum(versions.values()) or 1
        for i, known in enumerate(self.versions):
            for seen in known.values():
                seen[0] *= 0.98
            for combo, n in versions.items():
                v = combo[i]
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
        self.find_period = config.windows.size_seconds if b.season_find_period else None
        self.max_disp = b.max_dispersion
        self.warmup = b.warmup_windows
        self.own_after = max(config.cohorts.own_baseline_after_windows, self.warmup)
        self.clear_ratio = config.alerting.clear_ratio
        self.size = config.windows.size_seconds
        self.levels = config.cohorts.levels
        self.layout = layout_of(config)
        self.signals: tuple[Signal, ...] = tuple(
            s for s in self.layout.signals if config.signal(s.name).enabled
        )
        self.adopt_after = b.adopt_after_windows
        self._rates = tuple(s for s in self.signals if s.kind == "rate")
        self._rate_names = frozenset(s.name for s in self._rates)
        # (Kept apart from _rate_names, which says which rates learn_plain may take.)
        self._is_rate = frozenset(s.name for s in self._rates)
        self._not_rates = tuple(s for s in self.signals if s.kind != "rate")
        # The C twin of learn_plain_py when it was built (baselines/_rate.c).
        self._learn_plain: Callable[..., None] = PLAIN if PLAIN is not None else learn_plain_py
        # ...and of decide_rate_py (every rate baseline is the twin then: made by new_rate, or
        # loaded through as_twin).
        self._decide: Callable[..., tuple[float, bool, bool, float]] = (
            TWIN.decide if TWIN is not None else decide_rate_py)
        # ...and of with_data_py.
        self._with_data: Callable[..., list[tuple[Signal, str, float, float]]] = (
            WITH_DATA if WITH_DATA is not None else with_data_py)
        self.resolve_after = config.alerting.resolve_after_clean_windows
        self._rebaselines = [(int(r.at.timestamp() // self.size), r) for r in config.rebaseline]
        self._nats: dict[float, float] = {}
        self._thresholds: dict[tuple[int, tuple[str, ...]], dict[str, float]] = {}
        self._specs: list[tuple[Signal, str, float, float]] = []
        self._judging(config)

    def _judging(self, config: Config) -> None:
        """What judges a score: per signal, looked up once rather than per cohort and window.
        The sequential test keeps the signal's own threshold (its false-alarm budget is per
        pair); cohort overrides scale the window score's (cached per cohort)."""
        self.config = config
        self._thresholds = {}
        self._specs = [(s, config.signal(s.name).direction, config.signal(s.name).min_count,
                        config.signal(s.name).threshold) for s in self.signals]
        # What score's first steps test of each (see with_data_py): where its data count
        # (none for volume: an empty window is news) and its event count are, and whether
        # it is scored only upward (then a window without events has nothing to add).
        self._with_table = tuple(
            (spec, s.name, -1 if s.kind == "volume" else s.num if s.kind == "quantity" else s.den,
             s.num, spec[1] == "up")
            for spec in self._specs for s in (spec[0],))

    def reconfigure(self, config: Config) -> None:
        """Judge the next windows by ``config``'s thresholds, directions, min counts and
        overrides; the baselines and the signals scored stay as they are (the caller checked
        with :func:`detector.core.reload.plan_reload` that nothing else changed)."""
        self._judging(config)

    def min_count(self, name: str) -> float:
        """The events in a rate's numerator an up-alert needs."""
        return self.config.signal(name).min_count

    # -- thresholds -------------------------------------------------------------------------
    def thresholds(self, level: int, cohort: tuple[str, ...]) -> dict[str, float]:
        """Per-signal thresholds of a cohort, with the config's overrides applied (cached)."""
        key = (level, cohort)
        got = self._thresholds.get(key)
        if got is None:
            values: dict[str, str] = dict(zip(self.levels[level], cohort, strict=True))
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
            # (The C twin of RateBaseline when it was built: the same floats, faster.)
            return new_rate(self.fast, self.slow, self.max_disp, self.adopt_after)
        if sig.kind == "quantity":
            # (Likewise the C twin of QuantityBaseline.)
            return new_quantity(self.fast, self.slow, self.adopt_after, self.bins, self.period,
                                self.find_period)
        return VolumeBaseline(self.fast, self.slow, self.bins, self.period, self.max_disp)

    def _baseline(self, sig: Signal, own: CohortModel, parent: CohortModel | None
                  ) -> Baseline | None:
        b = own.baselines.get(sig.name)
        need = self.warmup if own.level == 0 else self.own_after
        if b is not None and b.n >= need:
            return b
        if sig.kind == "volume" or parent is None or sig.name in own.rebased:
            # (A forced re-baseline is this cohort's new normal: its parent does not know it.)
            return b if b is not None and b.n >= self.warmup else None
        pb = parent.baselines.get(sig.name)
        return pb if pb is not None and pb.n >= self.warmup else None

    # -- scoring ----------------------------------------------------------------------------
    def score(self, p: Partial, own: CohortModel, parent: CohortModel | None,
              firing: frozenset[str] | set[str]) -> list[Decision]:
        """Decisions for every signal with data in this window (pure: learns nothing)."""
        c = p.counts
        if len(c) < self.layout.size:   # from a state saved before the layout grew
            c.extend([0] * (self.layout.size - len(c)))
        window = p.window
        t0 = window * self.size
        thr = self.thresholds(p.level, p.cohort)
        seq, mine, recent = own.seq, own.baselines, own.recent
        need = self.warmup if own.level == 0 else self.own_after
        clear_ratio = self.clear_ratio
        decide = self._decide
        events = int(c[EVENTS])
        out: list[Decision] = []
        x: float
        y: float
        q: float
        observed: float
        cands: list[tuple[float, bool, float]]   # (score, slow horizon, its count)
        for sig, d, min_count, seq_t in self._with_data(self._with_table, c, seq):
            name, kind, num, den, sq, _, flags, log = sig
            if kind == "volume":
                n = k = c[EVENTS]
            else:
                n = c[num] if kind == "quantity" else c[den]
                k = c[num]   # for a quantity: the number of values (min_count applies)
            # A Baseline of the signal's kind: the calls below follow ``kind``, which mypy
            # cannot, so ``b`` is typed Any here (and in learn and adopt).
            b: Any = mine.get(name)
            if b is None or b.n < need:   # (the common case, its own baseline, inline)
                b = self._baseline(sig, own, parent)
                if b is None:
                    continue
            base_t = thr[name]
            t = base_t * (clear_ratio if name in firing else 1.0)
            if kind == "rate":
                # The window's scores, its candidates and the direction's pick (the C twin's
                # when built: the same floats; decide_rate_py is the reference).
                z, slow, hit, zf = decide(b, k, n, t, recent.get(name), window,
                                          flags and b is mine.get(name), d, min_count)
                observed = k / n
            else:
                if kind == "volume":
                    zf, zs = b.score_one(k, t0)
                    cands = [(zf, False, k), (zs, True, k)]
                    observed = k
                else:
                    x, y, q = n, c[den] / SCALE, c[sq] / SCALE2
                    zf, zs = b.score_one(x, y, q, t0)
                    cands = [(zf, False, k), (zs, True, k)]
                    # Multi-window evidence: the last three consecutive windows together, so a
                    # tenfold rise on a small cohort is not missed for want of counts in one.
                    # ...but only while this window on its own leans the same way, so one
                    # bad window is not stretched into three windows of "persistence" (and
                    # only then are they scored).
                    half = t / 2
                    # (max(zf, zs) and min(zf, zs), without the builtin calls.)
                    up_lean = (zs if zs > zf else zf) >= half
                    down_lean = (zs if zs < zf else zf) <= -half
                    prev = recent.get(name) if up_lean or down_lean else None
                    if prev and prev[-1][0] == window - 1:
                        for w, px, py, pq in prev:
                            if w >= window - 2:
                                x, y, q = x + px, y + py, q + pq
                        af, as_ = b.score_one(x, y, q, t0)
                        for a in ((af, False, x), (as_, True, x)):   # x: the summed count
                            if (a[0] > 0 and up_lean) or (a[0] < 0 and down_lean):
                                cands.append(a)
                    # Quantities are counted as log1p (tokens and latency are heavy-tailed) and
                    # reported back as geometric means; evaluation scores as plain means.
                    mean = c[den] / SCALE / n
                    observed = expm1(mean) if log else mean
                if d == "up":
                    z, slow, kk = max(cands)
                    hit = z >= t and kk >= min_count
                elif d == "down":
                    z, slow, kk = min(cands)
                    hit = z <= -t
                else:
                    z, slow, kk = max(cands, key=_magnitude)
                    hit = (z >= t and kk >= min_count) or z <= -t
            if kind != "quantity" and not flags:
                ev, confirmed = 0.0, False
            elif name not in seq and (
                    (-Z_QUIET <= zf <= Z_QUIET) if kind == "quantity"
                    else (d == "up" and k <= RISE_MIN * (n * b.expected(True)))):
                # _sequential's first return, without the call: an idle statistic and nothing
                # to add to it (the common case).
                ev, confirmed = 0.0, False
            else:
                ev, confirmed = self._sequential(sig, b, own, d, seq_t, k, n, zf)
            if confirmed and not hit:
                z, slow, hit = ev, False, True
            if kind == "volume":
                expected = b.expected(t0, slow)
            elif kind == "quantity":
                expected = b.expected(slow)
                expected = expm1(expected) if log else expected
            else:
                expected = b.expected(slow)
            # (Decision(...) without NamedTuple's Python-level __new__: one per scored pair.)
            out.append(_NEW(Decision, (name, z, observed, expected, base_t, hit, events, ev,
                                       confirmed)))
        return out

    def _sequential(self, sig: Signal, b: Baseline, own: CohortModel, d: str, t: float,
                    k: float, n: float, z_fast: float) -> tuple[float, bool]:
        """This window's sequential evidence (standard units, signed) and whether it confirms
        a shift in the signal's direction: the statistic at the threshold ``t`` (in nats, no
        hysteresis) *and* this window adding to it, so a statistic that drains slowly (a
        rare event's) does not keep an alert alive through windows with nothing in them.
        The new statistics wait in ``own.seq_next`` until the window is learned."""
        h = self._nats.get(t)
        if h is None:
            h = self._nats[t] = nats_for(t)
        got = (b.sequential(own.seq.get(sig.name), k, n, h, d)  # type: ignore[union-attr]
               if sig.kind == "rate" else _sequential_z(own.seq.get(sig.name), z_fast, h, d))
        if got is None:
            return 0.0, False   # no evidence, and none to keep (the common case)
        ev, confirmed, ups, down = got
        own.seq_next[sig.name] = (ups, down)
        return ev, confirmed

    def learn(self, p: Partial, own: CohortModel, decisions: list[Decision]) -> list[str]:
        """Teach the cohort's baselines with this window. An anomalous window teaches with
        bounded influence and stays out of the slow horizon, so nothing locks out; an
        anomalous episode that lasts ``baselines.adopt_after_windows`` is adopted as the new
        normal. Returns the signals whose baselines adopted a new level in this window."""
        nxt = own.seq_next
        if nxt:
            seq = own.seq
            for name, (ups, down) in nxt.items():
                up = max(ups)
                if up == 0.0 and down == 0.0:   # idle: quiet signals keep no state
                    if seq:
                        seq.pop(name, None)
                    continue
                cus = seq.get(name)
                if cus is None:
                    cus = seq[name] = Cusum()
                cus.keep(ups, up, down)
            nxt.clear()
        adopted: list[str] = []
        c = p.counts
        w = p.window
        recent, persist, episodes, baselines = own.recent, own.persist, own.episodes, own.baselines
        clear_ratio, warmup, resolve_after = self.clear_ratio, self.warmup, self.resolve_after
        # The rates without a decision in this window (most of them), and those whose decision
        # changes nothing of their learning (neither anomalous nor leaning as far as an
        # episode counts: what the loop below does for them is what learn_plain does), in one
        # call; the loop below leaves them out. Decisions come in signal order (see score), a
        # subsequence of self.signals.
        # (By index, not NamedTuple's properties: signal, score, threshold, anomalous.)
        rate_names = self._rate_names
        dec_list = [d for d in decisions
                    if d[5] or d[0] not in rate_names or abs(d[1]) >= clear_ratio * d[4]]
        dec = iter(dec_list)
        d_next = next(dec, None)
        self._learn_plain(self._rates, dec_list, c, recent, persist, episodes, baselines, w,
                          warmup, SLOW_FREEZE, resolve_after, self._new)
        # Without a rate's decision left to learn here (the common case), the loop below
        # skips every rate: it walks the other signals alone, in the same order.
        is_rate = self._is_rate
        signals = (self.signals if any(d[0] in is_rate for d in dec_list)
                   else self._not_rates)
        x: float
        y: float
        q: float
        for sig in signals:
            name, kind, num, den, sq, _, flags, _log = sig
            if kind == "rate":
                if d_next is None or d_next.signal != name:
                    continue   # learned by _learn_plain
                n = c[den]
                x, y, q = c[num], n, 0.0
            elif kind == "quantity":
                n = c[num]
                x, y, q = n, c[den] / SCALE, c[sq] / SCALE2
            else:
                n = c[EVENTS]
                x, y, q = n, 0.0, 0.0
            if kind != "volume":
                if n <= 0:   # no data, so no decision: what the steps below do then
                    if recent:
                        recent.pop(name, None)
                    if persist:
                        persist.pop(name, None)
                    if episodes:
                        ep = episodes.get(name)
                        if ep is not None and w - ep[1] >= resolve_after:
                            del episodes[name]
                    continue
                else:
                    entry = (w, x, y, q)
                    prev = recent.get(name)
                    if not prev:
                        recent[name] = [entry]
                    elif prev[-1][0] == w - 1:   # kept in place: the last two windows
                        if len(prev) > 1:
                            del prev[0]
                        prev.append(entry)
                    else:
                        prev[:] = (entry,)
            if d_next is not None and d_next.signal == name:
                d, d_next = d_next, next(dec, None)
            else:
                d = None
            bad = d is not None and d.anomalous
            if bad:
                persist[name] = persist.get(name, 0) + 1
            elif persist:
                persist.pop(name, None)
            # The episode goes on through windows that lean as far as a firing alert's
            # hysteresis asks, whether or not this cohort's own alert fires (a parent whose
            # alert its child stands for must adopt with the child, not page after it).
            if d is not None and (bad or abs(d.score) >= clear_ratio * d.threshold):
                if self._episode(own, sig, w, x, y, q):
                    adopted.append(name)
                    continue
            elif episodes:
                ep = episodes.get(name)
                if ep is not None and w - ep[1] >= resolve_after:
                    del episodes[name]
            b: Any = baselines.get(name)
            if b is None:
                if bad:
                    continue   # scored on the parent's baseline: nothing of its own to bound
                b = baselines[name] = self._new(sig)
            # Only what was judged anomalous: holding back windows whose evidence is merely
            # building would keep a rare event's hits out of its own baseline and bias it low.
            guarded = bad
            if guarded and b.n < warmup:
                continue       # too little of its own to bound an update by
            if kind == "rate":
                if guarded:
                    b.learn_one(x, n, anomalous=True)
                    continue
                # The slow horizon stays out of it while the fast one drifts away from it. (Not
                # while sequential evidence merely builds: a rare event's reference would learn
                # none of its own hits, sink, and build evidence out of nothing.)
                b.learn_window(x, n, flags, warmup, SLOW_FREEZE)
            elif kind == "quantity":
                b.learn_one(n, y, q, anomalous=guarded, t=w * self.size)
            else:
                b.learn_one(n, w * self.size)
        if not any(map(_ANOMALOUS, decisions)):
            own.learn_versions(p.versions, w)
        own.windows += 1
        return adopted

    def _episode(self, own: CohortModel, sig: Signal, w: int, x: float, y: float, q: float
                 ) -> bool:
        """Count an anomalous window into its episode (an episode lasts while fewer than
        ``resolve_after_clean_windows`` clean windows separate its anomalous ones, as an
        alert does); at ``adopt_after_windows`` the baseline takes the episode's level as
        the new normal. True when it did."""
        name = sig.name
        ep = own.episodes.get(name)
        if ep is None or w - ep[1] > self.resolve_after:
            ep = own.episodes[name] = [float(w), float(w), 0.0, 0.0, 0.0, 0.0]
        ep[1] = float(w)
        ep[2] += 1.0
        ep[3] += x
        ep[4] += y
        ep[5] += q
        if w - ep[0] + 1 < self.adopt_after:
            return False
        del own.episodes[name]
        own.seq.pop(name, None)
        own.persist.pop(name, None)
        b: Any = own.baselines.get(name)
        if b is not None:
            m, sx, sy, sq = ep[2], ep[3], ep[4], ep[5]
            if sig.kind == "rate":
                b.rebase(sx / m, sy / m)
            elif sig.kind == "quantity":
                b.rebase(sx, sy, sq)
            else:
                b.rebase(sx / m, w * self.size)
        return True

    # -- forced re-baselines ----------------------------------------------------------------
    def rebaseline(self, p: Partial, own: CohortModel) -> None:
        """Apply the config's ``[[rebaseline]]`` entries that this window is the first for:
        the matching signals of this cohort start a fresh baseline (warming up again, not
        scored meanwhile), and nothing else of its state is touched."""
        if not self._rebaselines:
            return
        values: dict[str, str] = dict(zip(self.levels[p.level], p.cohort, strict=True))
        for at, r in self._rebaselines:
            if p.window < at or any(values.get(f) != v for f, v in r.match.items()):
                continue
            for sig in self.signals:
                if matches(sig.name, r.signals) and own.rebased.get(sig.name, -1) < at:
                    own.rebased[sig.name] = at
                    own.baselines.pop(sig.name, None)
                    own.seq.pop(sig.name, None)
                    own.episodes.pop(sig.name, None)
                    own.persist.pop(sig.name, None)
                    own.recent.pop(sig.name, None)


def _sequential_z(cus: Cusum | None, z: float, h: float, d: str
                  ) -> tuple[float, bool, Sequence[float], float] | None:
    """A quantity's sequential step, as RateBaseline.sequential is a rate's: a window of
    standard score ``z`` at ``h`` nats in direction ``d``; its tails are heavier than its
    standard score admits, so a window adds at most a third of ``h``."""
    c = _IDLE if cus is None else cus
    if cus is None and -Z_QUIET <= z <= Z_QUIET:
        return None   # what peeking gives an idle statistic here
    up, down = c.peek_z(z, h / 3)
    if cus is None and up == down == 0.0:
        return None
    return settle(c, [up, *ZEROS[1:]], up, down, h, d)


def with_data_py(table: tuple[tuple[Any, str, int, int, bool], ...], c: list[int],
                 seq: dict[str, Cusum]) -> list[Any]:
    """The specs of :meth:`Scorer.score` with something to score in a window of counts
    ``c`` (the reference for ``with_data`` in baselines/_rate.c, tests/test_rate_twin.py):
    each table entry is (spec, signal name, where its data count is or -1 for none, where
    its event count is, whether it is scored only upward). No data: nothing to score; an
    upward signal without events and without evidence in ``seq`` to drain: nothing either
    (the common case)."""
    out = []
    for spec, name, at_n, at_k, up_only in table:
        if at_n >= 0:
            if c[at_n] <= 0:
                continue
            if up_only and c[at_k] == 0 and (name not in seq or seq[name].idle()):
                continue
        out.append(spec)
    return out


def learn_plain_py(rates: tuple[Signal, ...], decisions: list[Decision], c: list[int],
                   recent: dict[str, list[tuple[int, float, float, float]]],
                   persist: dict[str, int], episodes: dict[str, list[float]],
                   baselines: dict[str, Any], w: int, warmup: int, freeze: float,
                   resolve_after: int, new: Callable[[Signal], Any]) -> None:
    """What :meth:`Scorer.learn` does for the rate signals with no decision in window ``w``
    (no data, or nothing to score: most of them; the scorer passes only the decisions its own
    loop learns, see there), the reference for ``learn_plain`` in
    baselines/_rate.c (tests/test_rate_twin.py): the last windows' totals kept, persistence
    and an expired episode dropped, and the window learned with the slow horizon frozen
    while drifting. ``decisions`` are in signal order; ``new(sig)`` makes a baseline."""
    decided = {d.signal for d in decisions}
    for sig in rates:
        name, _, num, den, _, _, flags, _ = sig
        if name in decided:
            continue
        n = c[den]
        if n <= 0:
            if recent:
                recent.pop(name, None)
            if persist:
                persist.pop(name, None)
            if episodes:
                ep = episodes.get(name)
                if ep is not None and w - ep[1] >= resolve_after:
                    del episodes[name]
            continue
        x = c[num]
        entry = (w, x, n, 0.0)
        prev = recent.get(name)
        if not prev:
            recent[name] = [entry]
        elif prev[-1][0] == w - 1:   # kept in place: the last two windows
            if len(prev) > 1:
                del prev[0]
            prev.append(entry)
        else:
            prev[:] = (entry,)
        if persist:
            persist.pop(name, None)
        if episodes:
            ep = episodes.get(name)
            if ep is not None and w - ep[1] >= resolve_after:
                del episodes[name]
        b = baselines.get(name)
        if b is None:
            b = baselines[name] = new(sig)
        b.learn_window(x, n, flags, warmup, freeze)


def decide_rate_py(b: RateBaseline, k: float, n: float, t: float,
                   prev: list[tuple[int, float, float, float]] | None, window: int, drift: bool,
                   d: str, min_count: float) -> tuple[float, bool, bool, float]:
    """A rate window's decision as :meth:`Scorer.score` makes it, the reference for ``decide``
    in baselines/_rate.c (tests/test_rate_twin.py): ``k`` events in ``n`` units against the
    baseline ``b`` at threshold ``t``, with ``prev`` the cohort's recent totals of the signal
    (or None) and ``drift`` whether the two-horizon test applies. Returns (score, slow
    horizon, whether it crosses in direction ``d``, the fast horizon's own score)."""
    zf, zs = b.score_one(k, n)
    cands: list[tuple[float, bool, float]] = [(zf, False, k), (zs, True, k)]
    # Multi-window evidence: the last three consecutive windows together, so a tenfold rise
    # on a small cohort is not missed for want of counts in one. ...but only while this
    # window on its own leans the same way, so one bad window is not stretched into three
    # windows of "persistence" (and only then are they scored).
    half = t / 2
    # (max(zf, zs) and min(zf, zs), without the builtin calls.)
    up_lean = (zs if zs > zf else zf) >= half
    down_lean = (zs if zs < zf else zf) <= -half
    if (up_lean or down_lean) and prev and prev[-1][0] == window - 1:
        x, y = k, n
        for w, px, py, _ in prev:
            if w >= window - 2:
                x, y = x + px, y + py
        af, as_ = b.score_one(x, y)
        for a in ((af, False, x), (as_, True, x)):   # x: the summed count
            if (a[0] > 0 and up_lean) or (a[0] < 0 and down_lean):
                cands.append(a)
    # Two horizons apart: a slow ramp, in the fast horizon's decayed sums against the slow
    # rate; only while this window on its own leans that way (so the alert resolves when the
    # ramp is over) and only on the cohort's own baseline (``drift``).
    if drift:
        lean = zs if abs(zs) > abs(zf) else zf   # this window alone
        if abs(lean) >= t / 2:
            zd = b.drift_score(k, n)
            if zd * lean > 0:
                cands.append((zd, True, k))
    if d == "up":
        z, slow, kk = max(cands)
        return z, slow, z >= t and kk >= min_count, zf
    if d == "down":
        z, slow, kk = min(cands)
        return z, slow, z <= -t, zf
    z, slow, kk = max(cands, key=_magnitude)
    return z, slow, (z >= t and kk >= min_count) or z <= -t, zf
