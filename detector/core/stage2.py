"""Stage 2 of the detection core, for the route keys (root-level cohorts) handed to it.

It merges the partials stage 1 (:mod:`detector.core.stage1`) sends, closes windows on a
watermark, scores them, groups children under a parent, names the suspected change and the
evidence, and drives the alert lifecycle. No Kafka or Faust import here: drivers feed partials
and hard-rule hits in and take :class:`~detector.core.alert.Alert` emissions out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final

from baselines.poisson import poisson_score
from detector.config import Config
from detector.core.alert import Alert
from detector.core.attribution import TOOL_FIELD, Trail, describe
from detector.core.indicators import (
    CANARY,
    PRODUCTION,
    canary_pairs,
    churn,
    compared,
    version_gap,
    widest,
)
from detector.core.lifecycle import Key, Lifecycle
from detector.core.partials import (
    UNKNOWN,
    VERSION_FIELDS,
    Partial,
    Versions,
    empty_partial,
    merge_keyed,
    route_fields,
    route_key,
    split_values,
)
from detector.core.reload import plan_reload
from detector.core.rules import RuleHit
from detector.core.scoring import KNOWN_WEIGHT, CohortModel, Decision, Scorer
from detector.core.signals import EVENTS, Signal
from detector.core.watermark import Watermark

_TS: Final = attrgetter("ts")
_ANOMALOUS: Final = attrgetter("anomalous")
_NONE: Final[frozenset[str]] = frozenset()

__all__ = ["Stage2"]

_SUSPECT_ORDER = (1, 2, 0)     # on a tie: prompt, then policy, then model version
MAX_GAP_WINDOWS = 1440         # an event-time jump larger than a day is not walked window by window
#: A leading indicator's finding: cohort, decision, persistence (0: its incident's, one more
#: per window in a row), evidence trace ids, suspected change, summary (``{}``: persistence)
#: and what a canary gap compared.
_Leading = tuple[tuple[int, tuple[str, ...]], Decision, int, list[str],
                 dict[str, str | None] | None, str, dict[str, Any] | None]
#: A value's events can clear it of an anomaly once it has run this many windows: sooner,
#: its "ordinary" windows may be a lagging signal's (overrides come minutes after answers).
SETTLED_WINDOWS = 15
_NOT_PAGED: Final = object()


class Stage2:
    """Detection for the route keys fed to it (a parent cohort and all its children always
    share one): windows, scores, grouping and the alert lifecycle."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.size = config.windows.size_seconds
        # Windows close on the sources' watermark; this one says where a hit's source was.
        self.wm = Watermark(self.size, config.windows.allowed_lateness_seconds)
        self.levels = config.cohorts.levels
        self.group_min = config.cohorts.group_min_children
        self.k = config.alerting.evidence_trace_ids
        self.share = config.alerting.version_share
        self.lookback = config.alerting.suspect_lookback_windows
        al = config.alerting
        self.trail_decay = 0.5 ** (1.0 / al.attribution_half_life_windows)
        self.attr_min = al.attribution_min_score
        self.attr_detects = al.attribution_detects
        self.clear_ratio = al.clear_ratio
        self.scorer = Scorer(config)
        self.compared = compared(self.scorer.signals, config)   # by the canary gap
        self.life = Lifecycle(config)
        self.models: dict[tuple[int, tuple[str, ...]], CohortModel] = {}
        self.pending: dict[int, dict[tuple[int, tuple[str, ...]], Partial]] = {}
        self.next_window: int | None = None
        self.late_partials = 0
        self.windows_closed = 0
        # Stage-2 load, for its spread over workers (bench/stream.py): cohort windows scored
        # and (cohort, signal) pairs scored. Per process; not part of the saved state.
        self.cohort_windows = 0
        self.pairs_scored = 0
        # Optional sink of every scored (window, level, cohort, decision), e.g. replay's
        # --scores-out; None costs nothing on the hot path.
        self.on_decision: Callable[[int, int, tuple[str, ...], Decision], None] | None = None
        # Optional: each closed window's partials with the alerts it emitted (the stream's
        # evidence records take the totals behind an alert from them).
        self.on_closed: Callable[[int, dict[tuple[int, tuple[str, ...]], Partial],
                                  list[Alert]], None] | None = None
        # For a cohort at level i > 0, the positions of its parent's fields.
        self._up = [()] + [
            tuple(self.levels[i].index(f) for f in self.levels[i - 1])
            for i in range(1, len(self.levels))
        ]
        # The positions of a root cohort's route fields (partials.route_fields).
        self._route = tuple(self.levels[0].index(f) for f in route_fields(self.levels[0]))
        self._sig = {s.name: s for s in self.scorer.signals}
        # The signals a tool's value is a candidate for: those counted per tool call.
        tool_calls = self.scorer.layout.at["tool_calls"]
        self._tool_signals = frozenset(s.name for s in self.scorer.signals
                                       if s.kind == "rate" and s.den == tool_calls)
        self._detecting = self._detectors(config)
        # Per detecting signal, (numerator, min_count, a tool signal): _detect's first test,
        # made once (None: again after a reload, min_count may change).
        self._gates: dict[str, tuple[int, float, bool]] | None = None
        self._gate_nums: list[int] = []   # the gates' numerators, in order

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config from the next window on: thresholds, directions, severity
        rules, overrides, actions and runbook URLs. Call it between :meth:`apply` calls (a
        window boundary); baselines, pending partials and alert ids stay. A config that
        differs in anything else is refused whole (ValueError naming the keys) before any of
        it is applied."""
        plan = plan_reload(self.config, config)
        if not plan.ok:
            raise ValueError(f"needs a restart: {', '.join(plan.refused)}")
        self.config = config
        self.scorer.reconfigure(config)
        self.compared = compared(self.scorer.signals, config)
        self.life.reconfigure(config)
        self._detecting = self._detectors(config)   # a direction may have changed
        self._gates = None

    def _detectors(self, config: Config) -> frozenset[str]:
        """The flag rates attribution may page through: those watched upwards."""
        return frozenset(s.name for s in self.scorer.signals
                         if s.kind == "rate" and s.flags
                         and config.signal(s.name).direction in ("up", "both"))

    # -- input ------------------------------------------------------------------------------
    def add_partial(self, p: Partial) -> None:
        if self.next_window is not None and p.window < self.next_window:
            self.late_partials += 1
            return
        self.scorer.layout.fit(p)
        merge_keyed(self.pending.setdefault(p.window, {}), (p.level, p.cohort), p, self.k)

    def apply(self, hits: list[RuleHit], watermark: float | None) -> list[Alert]:
        """Hard-rule hits (in event time) and the closing of windows up to ``watermark``
        (None: none), in the order one in-order source would see them: a hit at ``ts`` after
        the windows that end by ``ts`` minus the allowed lateness (that source's watermark when
        the event came), before the later ones. A stream that hands stage 2 a backlog in large
        steps then pages what a replay of the same events pages."""
        out: list[Alert] = []
        for h in hits:
            if watermark is not None:
                out += self.advance(min(self.wm.at(h.ts), watermark))
            out += self._hit(h)
        if watermark is not None:
            out += self.advance(watermark)
        return out

    def _hit(self, h: RuleHit) -> list[Alert]:
        fin = len(self.levels) - 1
        model = self.models.get((fin, h.cohort))
        sus = self._suspect(model, {h.versions: 1}, int(h.ts // self.size))
        a = self.life.on_hit(h.signal, fin, h.cohort, h.ts, h.trace_id, sus)
        return [a] if a else []

    def advance(self, watermark: float) -> list[Alert]:
        """Close every window that ends at or before ``watermark``; return alert emissions."""
        if not math.isfinite(watermark):
            return []   # stage 1 lets no such time through; nothing to close by it
        upto = self.wm.upto(watermark)
        if self.next_window is None:
            if not self.pending:
                return []
            self.next_window = min(self.pending)
        out: list[Alert] = []
        while self.next_window < upto:
            if upto - self.next_window > MAX_GAP_WINDOWS:
                # A long silence (or a far-future timestamp): close the windows that have
                # data, not every empty one in between.
                ahead = [w for w in self.pending if w >= self.next_window]
                if not ahead:
                    self.next_window = upto
                    break
                self.next_window = min(ahead)
            out += self._close(self.next_window)
            self.next_window += 1
        return out

    # -- one window -------------------------------------------------------------------------
    def _parent(self, level: int, cohort: tuple[str, ...]) -> tuple[int, tuple[str, ...]] | None:
        if level == 0:
            return None
        return level - 1, tuple(cohort[i] for i in self._up[level])

    def _score_learn(self, w: int, firing: dict[tuple[int, tuple[str, ...]], set[str]],
                     finest: bool | None = None
                     ) -> tuple[dict[tuple[int, tuple[str, ...]], list[Decision]], list[Key],
                                dict[tuple[int, tuple[str, ...]], Partial]]:
        """Window ``w``'s cohorts scored (with the signals firing on each) and learnt: their
        decisions in cohort order, the adoptions in that order, and the partials. ``finest``
        True: only the finest cohorts, False: only the coarser ones (the others' input stays
        pending, and the window with it); None: all."""
        if finest is None:
            parts = self.pending.pop(w, {})
        else:
            fin = len(self.levels) - 1
            slot = self.pending.get(w, {})
            parts = {k: p for k, p in slot.items() if (k[0] == fin) == finest}
            for k in parts:
                del slot[k]
            if not finest:
                self.pending.pop(w, None)
        t0 = w * self.size
        # Silence is data for volume: a cohort that normally has traffic gets an empty window.
        for key, m in self.models.items():
            if finest is not None and (key[0] == len(self.levels) - 1) != finest:
                continue
            if key not in parts and m.expects_traffic(t0):
                parts[key] = empty_partial(w, key[0], key[1], self.scorer.layout.size)
        decisions: dict[tuple[int, tuple[str, ...]], list[Decision]] = {}
        for key in sorted(parts):
            own = self.models.get(key)
            if own is None:
                own = self.models[key] = CohortModel(key[0])
            p = parts[key]
            if own.trail is None:
                own.trail = Trail(w, self.trail_decay, self.scorer.warmup, self.lookback)
            if p.values:
                own.trail.add(w, p.values, p.counts)
            self.scorer.rebaseline(p, own)
            pk = self._parent(*key)
            parent = self.models.get(pk) if pk else None
            fire = firing.get(key, _NONE)
            ds = decisions[key] = self.scorer.score(p, own, parent, fire)
            self.pairs_scored += len(ds)
            if self.attr_detects and own.trail.has_candidates(w):
                self._detect(own, ds, fire, p)
            own.trail.settle(w, not any(map(_ANOMALOUS, ds)))
        self.cohort_windows += len(parts)
        adopted: list[Key] = []
        for key, ds in decisions.items():
            for signal in self.scorer.learn(parts[key], self.models[key], ds):
                adopted.append((signal, key[0], key[1]))
        if self.on_decision is not None:
            for key, ds in decisions.items():
                for d in ds:
                    self.on_decision(w, key[0], key[1], d)
        return decisions, adopted, parts

    def _close(self, w: int) -> list[Alert]:
        decisions, adopted, parts = self._score_learn(w, self._firing())
        return self._decide(w, decisions, adopted, parts)

    def _decide(self, w: int, decisions: dict[tuple[int, tuple[str, ...]], list[Decision]],
                adopted: list[Key], parts: dict[tuple[int, tuple[str, ...]], Partial]
                ) -> list[Alert]:
        """Grouping and the alert lifecycle for window ``w``'s decisions (only the anomalous
        ones matter, besides a parent's own)."""
        t0 = w * self.size
        t1 = t0 + self.size
        reps = self._representatives(decisions)
        out: list[Alert] = []
        for a_key in adopted:
            reps.pop(((a_key[1], a_key[2]), a_key[0]), None)
            a = self.life.adopted(a_key, t1)
            if a:
                out.append(a)
        touched: set[Key] = self.life.touch_hits(t0)
        for (key, signal), (d, persistence, grouped) in sorted(reps.items()):
            evidence, sus = self._context(key, d, w, parts)
            a = self.life.on_anomaly(key[0], key[1], d, persistence, (t0, t1),
                                     evidence, sus, grouped)
            touched.add((signal, key[0], key[1]))
            if a:
                out.append(a)
        out += self._leading(w, parts, decisions, touched)
        out += self.life.close_window(touched)
        self.windows_closed += 1
        if self.on_closed is not None:
            self.on_closed(w, parts, out)
        return out

    # -- leading indicators (core/indicators.py) ------------------------------------------
    def _coarse_model(self, key: tuple[int, tuple[str, ...]]) -> CohortModel | None:
        """The model of a cohort coarser than the finest (every shard's replica is alike)."""
        return self.models.get(key)

    def _leading(self, w: int, parts: dict[tuple[int, tuple[str, ...]], Partial],
                 decisions: dict[tuple[int, tuple[str, ...]], list[Decision]],
                 touched: set[Key]) -> list[Alert]:
        """Window ``w``'s leading-indicator alerts: the canary gap of each app with both
        environments, and the prompt churn of each cohort at the coarsest level. Their
        persistence is their incident's, one more for each window in a row."""
        t0 = w * self.size
        out: list[Alert] = []
        for key, d, since, evidence, sus, detail, cmp in (self._gaps(parts, decisions)
                                                          + self._churn(w, parts)):
            lkey = (d.signal, key[0], key[1])
            inc = self.life.active.get(lkey)
            persistence = since or (
                inc.persistence + 1 if inc is not None and inc.last_end == t0 else 1)
            a = self.life.on_anomaly(key[0], key[1], d, persistence, (t0, t0 + self.size),
                                     evidence, sus, 0, detail.format(persistence), cmp)
            touched.add(lkey)
            if a:
                out.append(a)
        return out

    def _threshold(self, signal: str, key: tuple[int, tuple[str, ...]]) -> float:
        t = self.config.signal(signal).threshold
        active = (signal, key[0], key[1]) in self.life.active
        return t * self.config.alerting.clear_ratio if active else t

    def _paged(self, signal: str, root: tuple[int, tuple[str, ...]]) -> Any:
        """The suspected change of the coarsest cohort within ``root`` firing on ``signal``
        (``_NOT_PAGED`` if none is)."""
        names = self.levels[root[0]]
        for key in sorted(k for k in self.life.active if k[0] == signal):
            fields = self.levels[key[1]]
            if all(f in fields and key[2][fields.index(f)] == v
                   for f, v in zip(names, root[1], strict=True)):
                return self.life.active[key].suspected
        return _NOT_PAGED

    def _gaps(self, parts: dict[tuple[int, tuple[str, ...]], Partial],
              decisions: dict[tuple[int, tuple[str, ...]], list[Decision]]) -> list[_Leading]:
        sc = self.config.signal("canary_gap")
        if not sc.enabled or not self.compared:
            return []
        out: list[_Leading] = []
        need = self.scorer.warmup
        for ckey, pkey in canary_pairs(parts, self.levels):
            prod = self._coarse_model(pkey)

            def dispersion(name: str, prod: CohortModel | None = prod) -> float:
                b: Any = prod.baselines.get(name) if prod is not None else None
                return b.dispersion() if b is not None and b.n >= need else 1.0

            t = self._threshold("canary_gap", ckey)
            # Only signals that either side's own baseline finds leaning half-way off: a
            # gap both baselines know (another traffic mix, a change production has adopted)
            # is the normal, not news.
            moved = {d.signal for k in (ckey, pkey) for d in decisions.get(k, ())
                     if abs(d.score) >= t / 2}
            signals = [s for s in self.compared if s.name in moved]
            if not signals:
                continue
            best = widest(signals, parts[ckey], parts[pkey],
                          (self._coarse_model(ckey), prod), dispersion, sc.min_count, t)
            if best is None or abs(best[1]) < t:
                continue
            sig, z, seen, expected = best
            d = Decision("canary_gap", z, seen, expected, sc.threshold, True,
                         int(parts[ckey].counts[EVENTS]))
            # The evidence of the side that is higher: the canary's when it is.
            side = parts[ckey] if z > 0 else parts[pkey]
            evidence = self._evidence(side, d._replace(signal=sig.name, score=1.0))
            twin = " ".join(f"{f}={v}" for f, v in zip(self.levels[pkey[0]], pkey[1],
                                                       strict=True))
            detail = (f"canary_gap: {sig.name} {seen:.4g} in {CANARY} vs {expected:.4g} in "
                      f"{PRODUCTION} ({twin}), score {z:+.1f} for {{}} window(s)")
            cmp = {"signal": sig.name,
                   "cohort": dict(zip(self.levels[pkey[0]], pkey[1], strict=True))}
            # Production the side that moved, on a signal it already pages on: the gap names
            # what that alert's events name (one incident, one attribution at every level).
            off = [max((abs(x.score) for x in decisions.get(k, ()) if x.signal == sig.name),
                       default=0.0) for k in (ckey, pkey)]
            sus: Any = self._paged(sig.name, pkey) if off[1] > off[0] else _NOT_PAGED
            if sus is _NOT_PAGED:
                sus = version_gap(parts[ckey], parts[pkey], _SUSPECT_ORDER)
            out.append((ckey, d, 0, evidence, sus, detail, cmp))
        return out

    def _churn(self, w: int, parts: dict[tuple[int, tuple[str, ...]], Partial]) -> list[_Leading]:
        sc = self.config.signal("prompt_churn")
        if not sc.enabled:
            return []
        lookback = self.config.indicators.churn_windows
        out: list[_Leading] = []
        for key in sorted(parts):
            model = self._coarse_model(key) if key[0] == 0 else None
            if model is None:
                continue
            changes = churn(model, w, lookback)
            n = len(changes)
            if n < self._threshold("prompt_churn", key):
                continue
            # Persistent since the change that brought the count to the threshold (changes
            # come newest first).
            reached = changes[max(n - math.ceil(sc.threshold), 0)][0]
            d = Decision("prompt_churn", float(n), float(n), None, sc.threshold, True,
                         int(parts[key].counts[EVENTS]))
            sus = {"field": "prompt_version", "now": changes[0][1],
                   "baseline": changes[1][1] if n > 1 else None}
            detail = (f"prompt_churn: {n} new prompt versions within {lookback} windows, the "
                      f"newest {changes[0][1]}, for {{}} window(s)")
            evidence = list(parts[key].samples.get(EVENTS, []))
            out.append((key, d, w - reached + 1, evidence, sus, detail, None))
        return out

    def _context(self, key: tuple[int, tuple[str, ...]], d: Decision, w: int,
                 parts: dict[tuple[int, tuple[str, ...]], Partial]
                 ) -> tuple[list[str], dict[str, Any]]:
        """An alert's evidence trace ids and suspected change, from its cohort's partial."""
        p = parts[key]
        return self._evidence(p, d), self._attribute(self.models[key], p, d, w)

    def _persist(self, key: tuple[int, tuple[str, ...]], signal: str) -> int:
        return self.models[key].persist.get(signal, 1)

    def _firing(self) -> dict[tuple[int, tuple[str, ...]], set[str]]:
        """Per cohort, the signals with an alert firing on it or on a cohort below it: a
        parent whose child's alert stands for the incident keeps the same hysteresis, so
        its view of the incident (and of the episode its baseline adopts) goes on with the
        child's instead of flickering at the full threshold."""
        out: dict[tuple[int, tuple[str, ...]], set[str]] = {}
        for signal, level, cohort in self.life.active:
            key: tuple[int, tuple[str, ...]] | None = (level, cohort)
            while key is not None:
                out.setdefault(key, set()).add(signal)
                key = self._parent(*key)
        return out

    def _representatives(
        self, decisions: dict[tuple[int, tuple[str, ...]], list[Decision]]
    ) -> dict[tuple[tuple[int, tuple[str, ...]], str], tuple[Decision, int, int]]:
        """Which anomalous (cohort, signal) pairs speak for an incident: many children of
        one parent → the parent; a few children → the children, not the parent too."""
        reps: dict[tuple[tuple[int, tuple[str, ...]], str], tuple[Decision, int, int]] = {}
        for key, ds in decisions.items():
            for d in ds:
                if d.anomalous:
                    reps[(key, d.signal)] = (d, self._persist(key, d.signal), 0)
        for level in range(len(self.levels) - 1, 0, -1):
            kids: dict[tuple[tuple[int, tuple[str, ...]], str], list[tuple[Any, ...]]] = (
                defaultdict(list))
            for (key, signal) in [r for r in reps if r[0][0] == level]:
                kids[(self._parent(*key), signal)].append((key, signal))  # type: ignore[index]
            for (pkey, signal), members in sorted(kids.items()):
                if len(members) >= self.group_min:
                    worst = max((reps.pop(m) for m in members), key=lambda r: abs(r[0].score))
                    grouped = len(members)
                    mine = reps.get((pkey, signal))
                    if mine is None:
                        own = next((d for d in decisions.get(pkey, []) if d.signal == signal),
                                   None)
                        d = (own or worst[0])._replace(score=worst[0].score, anomalous=True)
                        mine = (d, worst[1], 0)
                    reps[(pkey, signal)] = (mine[0], max(mine[1], worst[1]), grouped)
                else:
                    reps.pop((pkey, signal), None)
        return reps

    def _evidence(self, p: Partial, d: Decision) -> list[str]:
        sig = next(s for s in self.scorer.signals if s.name == d.signal)
        if sig.kind == "quantity":
            return [t for _, t in sorted(p.top.get(sig.num, []), reverse=True)]
        if sig.kind == "rate" and d.score > 0:
            return list(p.samples.get(sig.num, []))
        return list(p.samples.get(EVENTS, []))

    def _suspect(self, model: CohortModel | None, versions: dict[Versions, int], window: int
                 ) -> dict[str, str | None] | None:
        """The first rollback candidate: among version values with enough of this window's
        traffic, one the baseline does not know, else one first seen within the look-back
        (a slow drift is noticed well after its deploy); the most recently introduced wins."""
        if model is None or not versions:
            return None
        total = sum(versions.values())
        best: tuple[float, float, int, str] | None = None
        for rank, i in enumerate(_SUSPECT_ORDER):
            known = model.versions[i]
            if not known:
                continue
            share: dict[str, int] = {}
            for combo, n in versions.items():
                v = combo[i]
                if v != UNKNOWN:
                    share[v] = share.get(v, 0) + n
            for v, n in share.items():
                entry = known.get(v)
                if entry is None or entry[0] < KNOWN_WEIGHT:
                    introduced = float(window)
                elif entry[1] >= window - self.lookback:
                    introduced = entry[1]
                else:
                    continue
                cand = (introduced, n / total, -rank, v)
                if n / total >= self.share and (best is None or cand > best):
                    best = cand
        if best is None:
            return None
        i = _SUSPECT_ORDER[-best[2]]
        older = {v: e[0] for v, e in model.versions[i].items()
                 if v != best[3] and e[0] >= KNOWN_WEIGHT and e[1] < best[0]}
        baseline = max(sorted(older), key=lambda v: older[v]) if older else None
        return {"field": VERSION_FIELDS[i], "baseline": baseline, "now": best[3]}

    # -- attribution (detector.core.attribution) ---------------------------------------------
    def _ranked(self, own: CohortModel | None, sig: Signal, sign: float, w: int
                ) -> list[tuple[float, int, str, float, float]]:
        """Candidate values of this cohort for this signal, strongest evidence first:
        (score in the alert's direction, field, value, observed with, observed without)."""
        trail = own.trail if own is not None else None
        if trail is None:
            return []
        b: Any = own.baselines.get(sig.name) if own is not None else None
        disp = b.dispersion() if sig.kind == "rate" and b is not None else 1.0
        spec = (sig.kind, sig.num, sig.den, sig.sq, sig.log)
        out = []
        for f, v in trail.candidates(w, self.lookback, self.scorer.warmup):
            if f == TOOL_FIELD and sig.name not in self._tool_signals:
                continue
            z, with_, without = trail.contrast(f, v, w, spec, disp)
            z *= sign
            if z >= self.attr_min and trail.first(f, v) <= w - SETTLED_WINDOWS:
                # Its events in the windows before the anomaly were ordinary, and would have
                # shown it: it came well before the anomaly rather than with it.
                pre, power = trail.before(f, v, w, spec, disp, with_)
                if power * sign >= self.attr_min and pre * sign < 1.0:
                    z = pre * sign
            out.append((z, f, v, with_, without))
        out.sort(key=lambda c: (-c[0], c[1], c[2]))
        return out

    def _gate(self) -> dict[str, tuple[int, float, bool]]:
        if self._gates is None:
            self._gates = {
                n: (self._sig[n].num, self.scorer.min_count(n), n in self._tool_signals)
                for n in self._detecting}
            self._gate_nums = sorted({g[0] for g in self._gates.values()})
        return self._gates

    def _may_detect(self, counts: list[int]) -> bool:
        """Whether :meth:`_detect` can find anything in a window with these counts: a value's
        events hold no more flagged units than the cohort's (rate numerators count events),
        so most windows of a sparse cohort cannot."""
        n_counts = len(counts)
        return not all(num >= n_counts or counts[num] < need
                       for num, need, _ in self._gate().values())

    def _detect(self, own: CohortModel, ds: list[Decision], firing: frozenset[str] | set[str],
                p: Partial) -> None:
        """A new value whose events fail far more than the rest's makes the window anomalous
        for that rate even when the cohort's overall rate moves little (a canary): its
        evidence past the signal's threshold, and this window's events with the value
        leaning that way on their own (so the alert ends when they stop failing)."""
        gates = self._gate()
        counts = p.counts
        if not self._may_detect(counts):
            return
        w = p.window
        trail = own.trail
        cands = trail.candidates(w, self.lookback, self.scorer.warmup) if trail else []
        if not cands:
            return
        splits: dict[int, dict[str, dict[int, int]]] = {}
        # Whichever candidate ranks first, its events in this window must hold at least
        # min_count flagged units (below): the most any candidate holds, per counter a gate
        # reads, tells at once where no ranking is needed (tools: for tool signals only).
        most: dict[int, int] = {}
        most_tool: dict[int, int] = {}
        nums = self._gate_nums if self._gate_nums[-1:] < [len(counts)] else [
            j for j in self._gate_nums if j < len(counts)]
        for f, v in cands:
            vals = p.values.get(f)
            if not vals:
                continue
            c = vals.get(v)
            if c is None:
                continue
            for j in nums:
                # The remainder value's ({}): the partial's count less the other values'.
                x = c.get(j, 0) if c else counts[j] - sum(e.get(j, 0) for e in vals.values())
                if x > most_tool.get(j, 0):
                    most_tool[j] = x
                if f != TOOL_FIELD and x > most.get(j, 0):
                    most[j] = x
        passing = {n for n, (num, need, tool) in gates.items()
                   if (most_tool if tool else most).get(num, 0) >= need}
        if not passing:
            return   # most windows: no candidate's events hold enough flagged units
        for i, d in enumerate(ds):
            if d.anomalous or d.signal not in passing:
                continue
            sig = self._sig[d.signal]
            ranked = self._ranked(own, sig, 1.0, w)
            if not ranked:
                continue
            t = d.threshold * (self.clear_ratio if d.signal in firing else 1.0)
            z, f, v, _, without = ranked[0]
            if z < t or abs(d.score) >= z:
                continue
            sp = splits.get(f)
            if sp is None:
                sp = splits[f] = split_values(p.values.get(f, {}), p.counts)
            mine = sp.get(v, {})
            k, n = mine.get(sig.num, 0), mine.get(sig.den, 0)
            b: Any = own.baselines.get(sig.name)
            sd = math.sqrt(max(b.dispersion(), 1.0)) if b is not None else 1.0
            if k >= self.scorer.min_count(sig.name) and n > 0 and poisson_score(
                    k, n * max(without, 0.5 / (n + 1.0))) / sd >= t / 2:
                ds[i] = d._replace(score=z, anomalous=True)

    def _attribute(self, own: CohortModel, p: Partial, d: Decision, w: int) -> dict[str, Any]:
        """The suspected change of an alert on this cohort and signal: the candidate value
        with the strongest evidence, and up to two more; or why there is none."""
        sig = self._sig.get(d.signal)
        if sig is None or sig.kind == "volume":
            # Events that did not come cannot carry anything: the newest value stands.
            old = self._suspect(own, p.versions, w)
            return old if old else {"reason": "volume: no version new since the baseline"}
        sign = 1.0 if d.score >= 0 else -1.0
        ranked = self._ranked(own, sig, sign, w)
        if not ranked:
            return {"reason": "no version, model or tool value changed within the look-back"}
        named = [c for c in ranked if c[0] >= self.attr_min][:3]
        parent = False
        if not named and own.level > 0:
            # Too few events here to tell; the parent's (which holds these) may. Named only
            # if this cohort has that value too, with this cohort's own figures.
            pk = self._parent(own.level, p.cohort)
            pm = self.models.get(pk) if pk else None
            up = self._ranked(pm, sig, sign, w) if pm is not None else []
            if up and up[0][0] >= self.attr_min:
                named = [c for c in ranked if c[1:3] == up[0][1:3]]
                parent = bool(named)
        if not named:
            z, f, v = ranked[0][:3]
            c = describe(f, v, None)
            return {"reason": f"no changed value carries it: {c['field']} {c['now']} scores "
                              f"{z:.1f}, under {self.attr_min:g}"}
        total = p.counts[EVENTS] or 1
        out = []
        trail = own.trail
        assert trail is not None
        for z, f, v, with_, without in named:
            now = split_values(p.values.get(f, {}), p.counts)
            n = now.get(v, {}).get(EVENTS, 0)
            c = describe(f, v, trail.baseline_of(f, v, w, now))
            c.update(share_of_events=round(n / total, 4), observed_with=round(with_, 6),
                     observed_without=round(without, 6), score=round(z, 2))
            out.append(c)
        first = out[0]
        first["also"] = out[1:]
        if parent:
            first["named_by"] = "parent"
        return first

    def cohort_counts(self) -> tuple[int, int]:
        """(warming, warm) cohorts: warm once its volume baseline is past warm-up."""
        need = self.scorer.warmup
        warm = sum(1 for m in self.models.values()
                   if (b := m.baselines.get("volume")) is not None and b.n >= need)
        return len(self.models) - warm, warm

    def route_of(self, level: int, cohort: tuple[str, ...]) -> str:
        """The route key of any cohort (its root cohort's route fields)."""
        while level > 0:
            level, cohort = self._parent(level, cohort)  # type: ignore[misc]
        return route_key(tuple(cohort[i] for i in self._route))
