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

import math
import zlib
from collections.abc import Callable
from typing import Any, Final

import msgspec

from detector.config import Config
from detector.core.alert import Alert
from detector.core.lifecycle import Key
from detector.core.partials import Partial, decode_partial, empty_partial, encode, route_key
from detector.core.rules import RuleHit, decode_hit, encode_hit
from detector.core.scoring import CohortModel, Decision
from detector.core.stage2 import MAX_GAP_WINDOWS, Stage2

__all__ = ["Finding", "OpenWindow", "Peer", "PeerState", "Report", "ShardedStage2", "peers_of",
           "shard_of"]

Cohort = tuple[int, tuple[str, ...]]


def shard_of(cohort: tuple[str, ...], shards: int) -> int:
    """The shard of a finest cohort: stable across processes and runs (not Python's hash)."""
    return zlib.crc32(route_key(cohort).encode()) % shards


def peers_of(level: int, cohort: tuple[str, ...], fin: int,
             owner: Callable[[tuple[str, ...]], int], count: int) -> range | tuple[int]:
    """The peers (of ``count``) that take a partial of ``(level, cohort)``: every peer a
    coarser cohort's (each keeps a replica), its owner a finest cohort's. Stage 1 routes by it
    and :meth:`Peer.holds` asks it, so the two cannot drift apart."""
    return range(count) if level < fin else (owner(cohort),)


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


def _gather(fin: int, decisions: dict[Cohort, list[Decision]], adopted: list[Key],
            reports: list[Report], findings: dict[tuple[Cohort, str], Finding]
            ) -> dict[Cohort, list[Decision]]:
    """The shards' reports added to a window's coarser decisions and adoptions (``adopted``
    in place, ``findings`` filled): the decisions returned and the adoptions left in cohort
    order, as one Stage2 sees them (grouping breaks ties by it)."""
    for r in reports:
        for f in r.findings:
            key = (fin, f.cohort)
            decisions.setdefault(key, []).append(f.decision)
            findings[(key, f.decision.signal)] = f
        adopted += [(s, fin, c) for s, c in r.adopted]
    adopted.sort(key=lambda a: (a[1], a[2]))
    return dict(sorted(decisions.items()))


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
        decisions = _gather(self.fin, decisions, adopted, reports, self._findings)
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


class OpenWindow(msgspec.Struct, array_like=True):
    """A window a peer has scored and learnt but not yet decided: what deciding it needs
    from this peer (its own report, the coarser cohorts' decisions, adoptions and partials),
    so the peer can wait for the others' reports, and save it. Its models do not change
    before the window is decided: the next window is scored only after."""

    window: int
    mine: Report
    coarse: list[tuple[int, tuple[str, ...], Decision]]   # every coarser decision, in order
    adopted: list[tuple[str, int, tuple[str, ...]]]       # coarser adoptions, in cohort order
    parts: list[bytes]                                    # the coarser partials (evidence)


class PeerState(msgspec.Struct, array_like=True):
    """What a peer holds beyond its route keys' state: the window it waits on, the reports it
    has, the hits and watermark not yet applied, and its reports of the windows whose finest
    cohorts it ran ahead on (a successor resumes from it)."""

    open: OpenWindow | None
    inbox: list[Report]
    mark: float | None
    hits: list[tuple[int | None, bytes]]
    ahead: list[Report] = []   # (absent in a state saved before run-ahead)


_PEER_STATE: Final = msgspec.msgpack.Decoder(PeerState)
_NONE: Final[frozenset[str]] = frozenset()   # no signal firing
#: How many windows a peer scores ahead of the one it waits on (bounds its saved state).
MAX_AHEAD: Final = 64


class Peer(Stage2):
    """One stage-2 partition's half of the split, for a driver that carries reports between
    partitions (the stream): it scores the finest cohorts it owns and a replica of every
    coarser one, sends its :class:`Report` of each window, and decides the window (grouping
    and the lifecycle, a replica on every peer) once every peer's report of it is in. It
    emits the alerts of the cohorts it owns (a coarser cohort's owner is ``shard_of`` its own
    key), so across the peers each alert of one :class:`Stage2` is emitted once, by one peer.

    Hard-rule hits go to every peer (the lifecycle is replicated); each applies them at the
    place one Stage2 would, between the same two windows, and only the owner names their
    suspected change (from its model) and emits them.

    Run-ahead: while it waits on a window's reports, a peer scores and learns the finest
    cohorts it owns in the windows after it and sends their reports at once, as long as
    nothing of them can depend on what deciding the waited-on window changes: the signals
    firing (where one may fire on a cohort, its pairs score alike firing or not, and no value
    detection looks at it), the coarser models (past the first window, no cohort young
    enough to be scored on its parent's baseline) and the held hits (not past one's place).
    The coarser replicas are scored in window order after each decision, locally, so a
    backlog of quiet windows is decided as fast as the reports come instead of one report hop
    per window; the decisions stay in window order (:meth:`_run_ahead`)."""

    def __init__(self, config: Config, index: int, count: int,
                 owner: Callable[[tuple[str, ...]], int] | None = None) -> None:
        super().__init__(config)
        self.fin = len(self.levels) - 1
        self.index = index
        self.count = count
        self.owner = owner or (lambda c: shard_of(c, count))
        self.inbox: dict[int, dict[int, Report]] = {}
        self.outbox: list[bytes] = []        # this peer's reports, for the driver to send
        self.open: OpenWindow | None = None
        self.ahead: list[Report] = []        # run ahead: finest scored, coarser not yet
        self._ahead_parts: dict[int, dict[Cohort, Partial]] = {}   # theirs, in memory
        self.ran_ahead = 0      # windows run ahead on (per process, not saved)
        self.held_back: dict[str, int] = {}   # why running ahead stopped, per reason
        self.mark: float | None = None       # the highest watermark handed in
        self.hits: list[tuple[int | None, RuleHit]] = []   # (place, hit), in arrival order
        self.report_bytes = 0
        self._findings: dict[tuple[Cohort, str], Finding] = {}
        self._parts: dict[Cohort, Partial] | None = None   # the open window's, in memory

    def holds(self, level: int, cohort: tuple[str, ...]) -> bool:
        """Whether this peer takes a partial of ``(level, cohort)``: every coarser one, and
        the finest cohorts it owns."""
        return self.index in peers_of(level, cohort, self.fin, self.owner, self.count)

    def prune(self) -> None:
        """Drop the finest cohorts another peer owns (state loaded as one Stage2 wrote it, a
        route key's whole tree): scoring them here would score them twice."""
        for key in [k for k in self.models if not self.holds(*k)]:
            del self.models[key]
        for slot in self.pending.values():
            for key in [k for k in slot if not self.holds(*k)]:
                del slot[key]

    def emits(self, a: Alert) -> bool:
        return self.owner(tuple(a.cohort.values())) == self.index

    # -- input ------------------------------------------------------------------------------
    def add_partial(self, p: Partial) -> None:
        last = self.ahead[-1].window if self.ahead else (
            self.open.window if self.open is not None else None)
        if last is not None and p.window <= last:
            self.late_partials += 1   # its window is scored already, as one Stage2's closed
            return
        super().add_partial(p)

    def apply(self, hits: list[RuleHit], watermark: float | None) -> list[Alert]:
        """As :meth:`Stage2.apply`, but a window is decided only once every peer's report of
        it is in (:meth:`receive`): the windows and hits that wait for it are held."""
        # One Stage2 has closed the windows before the watermark it had: a hit goes after
        # them whatever its own time (and so after any window this peer ran ahead on).
        floor = None if self.mark is None or self.next_window is None else self.wm.upto(
            self.mark)
        if watermark is not None and math.isfinite(watermark):
            self.mark = watermark if self.mark is None else max(self.mark, watermark)
        for h in hits:
            # One Stage2 applies a hit once the windows that end by its source's watermark at
            # the time (and no later one) are closed: its place is the first window after.
            place = None if watermark is None else self.wm.upto(min(self.wm.at(h.ts),
                                                                    watermark))
            if floor is not None:
                place = floor if place is None else max(place, floor)
            if self.hits and place is not None:
                last = self.hits[-1][0]
                place = place if last is None else max(place, last)
            elif self.hits:
                place = self.hits[-1][0]
            self.hits.append((place, h))
        return self._run()

    def receive(self, data: bytes) -> list[Alert]:
        """Another peer's (or this one's, resent) report; a window already decided drops it."""
        r = _REPORT.decode(data)
        if self.next_window is not None and r.window < self.next_window:
            return []
        self.inbox.setdefault(r.window, {})[r.shard] = r
        return self._run()

    def take_outbox(self) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out

    # -- the window loop --------------------------------------------------------------------
    def _run(self) -> list[Alert]:
        out: list[Alert] = []
        while True:
            if self.open is not None:
                got = self.inbox.get(self.open.window, {})
                if len(got) < self.count:
                    self._run_ahead()
                    return out
                out += self._decide_open()
                continue
            while self.hits and (self.hits[0][0] is None or self.next_window is None
                                 or self.hits[0][0] <= self.next_window):
                out += [a for a in self._hit(self.hits.pop(0)[1]) if self.emits(a)]
            w = self._next(out)
            if w is None:
                return out
            self._score_open(w)

    def _next(self, out: list[Alert]) -> int | None:
        """The next window to score, as :meth:`Stage2.advance` walks them; None: none yet."""
        if self.ahead:
            # The walk as it was run ahead on (by the watermark then, as one Stage2 walked
            # it then; no hit is placed before a window run ahead on).
            self.next_window = self.ahead[0].window
            return self.next_window
        if self.mark is None:
            return None
        upto = self.wm.upto(self.mark)
        if self.hits and self.hits[0][0] is not None:
            upto = min(upto, self.hits[0][0])   # a held hit goes before later windows
        if self.next_window is None:
            if not self.pending:
                return None
            self.next_window = min(self.pending)
        if self.next_window >= upto:
            return None
        if upto - self.next_window > MAX_GAP_WINDOWS:
            ahead = [w for w in self.pending if w >= self.next_window]
            if not ahead:
                self.next_window = upto
                return None
            self.next_window = min(ahead)
            if self.next_window >= upto:
                return None
        return self.next_window

    def _score_open(self, w: int) -> None:
        fin_parts: dict[Cohort, Partial] | None = None
        sent = bool(self.ahead)   # its report went when it ran ahead (w is its window)
        if sent:
            mine = self.ahead.pop(0)
            fin_parts = self._ahead_parts.pop(w, None)
            decisions, adopted, parts = self._score_learn(w, self._firing(), finest=False)
        else:
            decisions, adopted, parts = self._score_learn(w, self._firing())
            mine = self._report(w, decisions, adopted, parts)
        coarse = [(key[0], key[1], d) for key, ds in decisions.items() if key[0] < self.fin
                  for d in ds]
        # In memory, its own finest too (evidence totals); not kept after a restore.
        self._parts = parts if fin_parts is None else {**parts, **fin_parts}
        self.open = OpenWindow(w, mine, coarse, [a for a in adopted if a[1] < self.fin],
                               [encode(p) for k, p in sorted(parts.items()) if k[0] < self.fin])
        if not sent:
            self._send(mine)

    def _report(self, w: int, decisions: dict[Cohort, list[Decision]], adopted: list[Key],
                parts: dict[Cohort, Partial]) -> Report:
        """This peer's report of window ``w``: its finest cohorts' anomalous decisions with
        what an alert on them would carry (named now: their models move on), and adoptions."""
        mine = Report(w, self.index, [], [(s, c) for s, lv, c in adopted if lv == self.fin])
        for key, ds in decisions.items():
            if key[0] == self.fin:
                for d in ds:
                    if d.anomalous:
                        evidence, sus = super()._context(key, d, w, parts)
                        mine.findings.append(Finding(key[1], d, super()._persist(key, d.signal),
                                                     evidence, sus))
        return mine

    def _send(self, mine: Report) -> None:
        wire = _ENC.encode(mine)
        self.report_bytes += len(wire)
        self.outbox.append(wire)
        self.inbox.setdefault(mine.window, {})[self.index] = _REPORT.decode(wire)

    # -- run-ahead ----------------------------------------------------------------------------
    def _run_ahead(self) -> None:
        """While the open window waits on reports: the finest cohorts of the next windows
        scored, learnt and reported, while their outcome cannot depend on deciding it."""
        if self.config.rebaseline or self.mark is None or self.open is None:
            return
        upto = self.wm.upto(self.mark)
        if self.hits:
            # Not past a held hit's place: applying it reads its cohort's model as it is
            # then, and changes what fires.
            if self.hits[0][0] is None:
                return
            upto = min(upto, self.hits[0][0])
        may: dict[Cohort, set[str]] | None = None
        while len(self.ahead) < MAX_AHEAD:
            last = self.ahead[-1].window if self.ahead else self.open.window
            w = self._after(last + 1, upto)
            if w is None:
                return
            if may is None:
                # What may be firing on a finest cohort of this peer once the windows before
                # are decided: what fires now, and what its own reports of them find
                # anomalous (an alert on a finest cohort comes from its owner's finding or a
                # hit, and no hit comes first).
                may = {k: set(v) for k, v in self._firing().items() if k[0] == self.fin}
                for r in (self.open.mine, *self.ahead):
                    for f in r.findings:
                        may.setdefault((self.fin, f.cohort), set()).add(f.decision.signal)
            why = self._unsettled(w, may)
            if why:
                self.held_back[why] = self.held_back.get(why, 0) + 1
                return
            decisions, adopted, parts = self._score_learn(w, {}, finest=True)
            mine = self._report(w, decisions, adopted, parts)
            for f in mine.findings:
                may.setdefault((self.fin, f.cohort), set()).add(f.decision.signal)
            self.ahead.append(mine)
            self.ran_ahead += 1
            self._ahead_parts[w] = parts
            self._send(mine)

    def _after(self, start: int, upto: int) -> int | None:
        """The window :meth:`_next` will give once the walk is at ``start`` (None: none
        before ``upto``), without moving it."""
        if start >= upto:
            return None
        if upto - start > MAX_GAP_WINDOWS:
            ahead = [w for w in self.pending if w >= start]
            if not ahead or min(ahead) >= upto:
                return None
            return min(ahead)
        return start

    def _unsettled(self, w: int, may: dict[Cohort, set[str]]) -> str:
        """Why scoring and learning window ``w``'s finest cohorts here may not give the same
        whatever deciding the windows before it changes ("": it gives the same): every
        cohort has a model and is past scoring on its parent's baseline (but in the window
        right after the open one, whose parents are as they will be), and where a signal
        ``may`` fire on it, scores alike with none and with those firing (the hysteresis;
        scoring takes each signal's alone) and cannot make :meth:`_detect` look at its
        values. Scored and learnt with none firing then, as deciding would leave them."""
        t0 = w * self.size
        slot = self.pending.get(w, {})
        parts = {k: p for k, p in slot.items() if k[0] == self.fin}
        for key, m in self.models.items():
            if key[0] == self.fin and key not in parts and m.expects_traffic(t0):
                parts[key] = empty_partial(w, key[0], key[1], self.scorer.layout.size)
        sc = self.scorer
        for key, p in parts.items():
            own = self.models.get(key)
            if own is None:
                return "new"
            # The coarser models have learnt the open window, not those run ahead on since.
            if self.ahead and self._on_parent(own, p):
                return "young"
            fire = may.get(key)
            if not fire:
                continue
            if self.attr_detects and self._may_detect(p.counts):
                return "values"
            pk = self._parent(*key)
            parent = self.models.get(pk) if pk else None
            if sc.score(p, own, parent, _NONE) != sc.score(p, own, parent, fire):
                return "hysteresis"
        return ""

    def _on_parent(self, own: CohortModel, p: Partial) -> bool:
        """Whether scoring ``p`` may take a signal's baseline from the cohort's parent (as
        :meth:`Scorer._baseline` does while its own is young)."""
        sc = self.scorer
        c = p.counts
        for sig in sc.signals:
            if sig.kind == "volume" or sig.name in own.rebased:
                continue
            n = c[sig.num] if sig.kind == "quantity" else c[sig.den]
            if n <= 0:
                continue   # not scored in this window
            b = own.baselines.get(sig.name)
            if b is None or b.n < sc.own_after:
                return True
        return False

    def resend(self) -> None:
        """After a restore: the open window's report again, and those of the windows it ran
        ahead on (a peer that has one drops it)."""
        if self.open is not None:
            self.outbox.append(_ENC.encode(self.open.mine))
        self.outbox += [_ENC.encode(r) for r in self.ahead]

    @property
    def step(self) -> tuple[int | None, int | None, int | None]:
        """Where the window walk is: it moves when a window is scored or decided, or run
        ahead on."""
        return (self.next_window, None if self.open is None else self.open.window,
                self.ahead[-1].window if self.ahead else None)

    def dump_exchange(self) -> bytes:
        inbox = [r for w in sorted(self.inbox) for _, r in sorted(self.inbox[w].items())]
        return _ENC.encode(PeerState(self.open, inbox, self.mark,
                                     [(place, encode_hit(h)) for place, h in self.hits],
                                     self.ahead))

    def load_exchange(self, data: bytes) -> None:
        """After the route keys' state (:func:`~detector.core.snapshot.load_route`); the open
        window's report is queued again for the others (a peer that has it drops it)."""
        try:
            st = _PEER_STATE.decode(data)
            hits = [(place, decode_hit(h)) for place, h in st.hits]
        except msgspec.DecodeError as e:
            raise ValueError(f"stage-2 peer state: {e}") from None
        self.open, self.mark, self.hits, self._parts = st.open, st.mark, hits, None
        self.ahead, self._ahead_parts = st.ahead, {}
        for r in self.ahead:
            # Their finest input is learnt already (the route keys' saved models hold it).
            slot = self.pending.get(r.window)
            for key in [k for k in slot or () if k[0] == self.fin]:
                del slot[key]  # type: ignore[union-attr]
        self.inbox = {}
        for r in st.inbox:
            self.inbox.setdefault(r.window, {})[r.shard] = r
        self.resend()

    def restore_input(self, parts: list[Partial]) -> None:
        """Input saved as it came (after :meth:`load_exchange`), in arrival order: merged
        where it is not scored yet. A record of several windows outlives those scored, and
        the finest cohorts of a window run ahead on are learnt while its coarser ones wait."""
        opened = self.open.window if self.open is not None else None
        learnt = self.ahead[-1].window if self.ahead else opened
        for p in parts:
            if (self.next_window is not None and p.window < self.next_window) or (
                    p.window == opened) or (
                    learnt is not None and p.window <= learnt and p.level == self.fin):
                continue
            p.route = self.route_of(p.level, p.cohort)
            Stage2.add_partial(self, p)

    def _decide_open(self) -> list[Alert]:
        op = self.open
        assert op is not None
        w = op.window
        reports = self.inbox.pop(w)
        self.open = None
        decisions: dict[Cohort, list[Decision]] = {}
        for lv, c, d in op.coarse:
            decisions.setdefault((lv, c), []).append(d)
        adopted: list[Key] = list(op.adopted)
        self._findings = {}
        decisions = _gather(self.fin, decisions, adopted, [reports[i] for i in sorted(reports)],
                            self._findings)
        parts = self._parts if self._parts is not None else {
            (p.level, p.cohort): p for p in map(decode_partial, op.parts)}
        self._parts = None
        self.next_window = w + 1
        return [a for a in self._decide(w, decisions, adopted, parts) if self.emits(a)]

    def _persist(self, key: Cohort, signal: str) -> int:
        if key[0] == self.fin:
            return self._findings[(key, signal)].persistence
        return super()._persist(key, signal)

    def _context(self, key: Cohort, d: Decision, w: int, parts: dict[Cohort, Partial]
                 ) -> tuple[list[str], dict[str, Any]]:
        if key[0] == self.fin:
            f = self._findings[(key, d.signal)]
            return list(f.evidence), f.suspected
        return super()._context(key, d, w, parts)
