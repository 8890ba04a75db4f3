"""Stage 2 spread over shards by the finest cohort, with the same alerts as one Stage2.

A shard scores and learns the finest cohorts it owns (a stable hash of the cohort's key) and
keeps a replica of every coarser cohort (their partials go to every shard; few, and scoring a
young child against its parent's baseline needs the parent's model where the child is). What
crosses between shards each window is a :class:`Report`: the owned cohorts' anomalous decisions
with what an alert on them would carry, and their adoptions. Grouping ("children of one parent
break together: one parent alert") and the alert lifecycle run on the reports and the coarser
cohorts' own decisions, and the signals firing after a window go back into the next window's
scoring (hysteresis). That exchange is a per-window step: the next window of any shard is
scored only after every shard's report of this one. See docs/decisions/0006.

:class:`ShardedStage2` runs the shards in one process, exchanging the reports as the bytes the
wire would carry; it is how the split is held to one Stage2's alerts, field for field
(``tests/test_shards.py``), and how its spread is measured (``bench/capacity.py``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Final

import msgspec

from detector.config import Config
from detector.core.alert import Alert
from detector.core.lifecycle import Key
from detector.core.partials import Partial, decode_partial, encode, route_key
from detector.core.rules import RuleHit
from detector.core.scoring import CohortModel, Decision
from detector.core.stage2 import Stage2

__all__ = ["Finding", "Report", "ShardedStage2", "shard_of"]

Cohort = tuple[int, tuple[str, ...]]


def shard_of(cohort: tuple[str, ...], shards: int) -> int:
    """The shard of a finest cohort: stable across processes and runs (not Python's hash)."""
    return zlib.crc32(route_key(cohort).encode()) % shards


class Finding(msgspec.Struct, array_like=True):
    """One owned cohort's anomalous decision and what an alert on it would carry."""

    cohort: tuple[str, ...]
    decision: Decision
    persistence: int
    evidence: list[str]
    suspected: dict[str, Any]


class Report(msgspec.Struct, array_like=True):
    """What one shard tells the others after scoring a window."""

    window: int
    shard: int
    findings: list[Finding]
    adopted: list[tuple[str, tuple[str, ...]]]   # (signal, finest cohort), in cohort order


_REPORT: Final = msgspec.msgpack.Decoder(Report)
_ENC: Final = msgspec.msgpack.Encoder()


class ShardedStage2(Stage2):
    """Stage 2 over ``shards`` shards keyed by the finest cohort, run in one process: the
    same alerts as :class:`Stage2` for the same input."""

    def __init__(self, config: Config, shards: int,
                 owner: Callable[[tuple[str, ...]], int] | None = None) -> None:
        super().__init__(config)
        self.fin = len(self.levels) - 1
        self.shards = [Stage2(config) for _ in range(shards)]
        self.owner = owner or (lambda c: shard_of(c, shards))
        self.report_bytes = 0
        self._findings: dict[tuple[Cohort, str], Finding] = {}

    # -- input ------------------------------------------------------------------------------
    def add_partial(self, p: Partial) -> None:
        if self.next_window is not None and p.window < self.next_window:
            self.late_partials += 1
            return
        self.pending.setdefault(p.window, {})   # which windows have data (the shards hold it)
        if p.level == self.fin:
            self.shards[self.owner(p.cohort)].add_partial(p)
        else:
            for sh in self.shards:   # each replica its own copy: merging mutates partials
                sh.add_partial(decode_partial(encode(p)))

    def _hit(self, h: RuleHit) -> list[Alert]:
        sh = self.shards[self.owner(h.cohort)]
        model = sh.models.get((self.fin, h.cohort))
        sus = sh._suspect(model, {h.versions: 1}, int(h.ts // self.size))
        a = self.life.on_hit(h.signal, self.fin, h.cohort, h.ts, h.trace_id, sus)
        return [a] if a else []

    # -- one window -------------------------------------------------------------------------
    def _close(self, w: int) -> list[Alert]:
        self.pending.pop(w, None)
        firing = self._firing()
        coarse: tuple[dict[Cohort, list[Decision]], list[Key], dict[Cohort, Partial]] | None = None
        reports: list[Report] = []
        for i, sh in enumerate(self.shards):
            mine = sh._score_learn(w, firing)
            if coarse is None:   # every shard holds the same coarser cohorts: take the first's
                coarse = mine
            wire = _ENC.encode(self._report(sh, i, w, *mine))
            self.report_bytes += len(wire)
            reports.append(_REPORT.decode(wire))
        assert coarse is not None
        c_dec, c_adopted, c_parts = coarse
        decisions: dict[Cohort, list[Decision]] = {
            k: ds for k, ds in c_dec.items() if k[0] < self.fin}
        adopted: list[Key] = [a for a in c_adopted if a[1] < self.fin]
        self._findings = {}
        for r in reports:
            for f in r.findings:
                key = (self.fin, f.cohort)
                decisions.setdefault(key, []).append(f.decision)
                self._findings[(key, f.decision.signal)] = f
            adopted += [(s, self.fin, c) for s, c in r.adopted]
        # One Stage2 sees cohorts, and adoptions, in cohort order; grouping breaks ties by it.
        decisions = dict(sorted(decisions.items()))
        adopted.sort(key=lambda a: (a[1], a[2]))
        return self._decide(w, decisions, adopted, c_parts)

    def _report(self, sh: Stage2, i: int, w: int, decisions: dict[Cohort, list[Decision]],
                adopted: list[Key], parts: dict[Cohort, Partial]) -> Report:
        findings = []
        for key, ds in decisions.items():
            if key[0] != self.fin:
                continue
            for d in ds:
                if d.anomalous:
                    evidence, sus = sh._context(key, d, w, parts)
                    findings.append(Finding(key[1], d, sh._persist(key, d.signal), evidence,
                                            sus))
        return Report(w, i, findings, [(s, c) for s, lv, c in adopted if lv == self.fin])

    def _persist(self, key: Cohort, signal: str) -> int:
        if key[0] == self.fin:
            return self._findings[(key, signal)].persistence
        return self.shards[0]._persist(key, signal)

    def _coarse_model(self, key: Cohort) -> CohortModel | None:
        return self.shards[0].models.get(key)

    def _context(self, key: Cohort, d: Decision, w: int, parts: dict[Cohort, Partial]
                 ) -> tuple[list[str], dict[str, Any]]:
        if key[0] == self.fin:
            f = self._findings[(key, d.signal)]
            return list(f.evidence), f.suspected
        return self.shards[0]._context(key, d, w, parts)

    # -- load -------------------------------------------------------------------------------
    def cohort_counts(self) -> tuple[int, int]:
        """(warming, warm) over the shards, each coarser cohort once."""
        warming = warm = 0
        for i, sh in enumerate(self.shards):
            need = sh.scorer.warmup
            for key, m in sh.models.items():
                if key[0] < self.fin and i:
                    continue
                b = m.baselines.get("volume")
                if b is not None and b.n >= need:
                    warm += 1
                else:
                    warming += 1
        return warming, warm
