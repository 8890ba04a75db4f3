"""Stage 2 split over shards by the finest cohort gives one Stage2's alerts, field for field,
and spreads its scoring with the finest cohorts even under one root cohort."""

from __future__ import annotations

from pathlib import Path

import msgspec
import orjson
import pytest

from detector.config import load_config
from detector.core.partials import Partial, decode_partial, encode
from detector.core.pipeline import Pipeline
from detector.core.rules import RuleHit
from detector.core.shards import Peer, ShardedStage2, shard_of
from detector.core.snapshot import dump_route, load_route, routes
from detector.core.stage1 import Stage1
from detector.lab.simulate import simulate


def _alerts(lines: list[bytes], shards: int) -> tuple[list[bytes], Pipeline]:
    pipe = Pipeline(load_config(None, env=False), shards=shards)
    out = []
    for i in range(0, len(lines), 4096):
        out += pipe.feed_many(lines[i:i + 4096])
    out += pipe.finish()
    return [msgspec.json.encode(a) for a in out], pipe


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = tmp_path_factory.mktemp("sim")
    simulate(out, hours=4, seed=11, rate=5.0)
    return Path(out / "traces.jsonl").read_bytes().splitlines()


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_stage2_gives_the_same_alerts(traffic: list[bytes], shards: int) -> None:
    want, _ = _alerts(traffic, 1)
    got, pipe = _alerts(traffic, shards)
    # The traffic exercises what crosses shards: grouped parent alerts, hard-rule hits, and
    # alerts on finest cohorts owned by different shards.
    decoded = [msgspec.json.decode(a) for a in want]
    assert any(a.get("grouped_cohorts") for a in decoded)
    assert any(a["signal"] == "unauthorized_tool_call" for a in decoded)
    s2 = pipe.stage2
    assert isinstance(s2, ShardedStage2)
    owners = {shard_of(tuple(a["cohort"].values()), shards) for a in decoded
              if "tenant" in a["cohort"]}
    assert len(owners) > 1
    assert got == want
    assert all(sh.pairs_scored for sh in s2.shards)


def test_one_app_groups_children_of_different_shards(traffic: list[bytes]) -> None:
    """Every tenant under one app in one environment: one root cohort, so every parent alert
    groups children that the shards own apart, and the split still gives the same alerts."""
    one = []
    for line in traffic:
        try:
            e = orjson.loads(line)
        except orjson.JSONDecodeError:
            one.append(line)
            continue
        if isinstance(e, dict):
            e["app"], e["environment"] = "support-agent", "production"
        one.append(orjson.dumps(e))
    want, _ = _alerts(one, 1)
    got, pipe = _alerts(one, 2)
    grouped = [a for a in map(msgspec.json.decode, want) if a.get("grouped_cohorts")]
    assert grouped
    assert got == want
    s2 = pipe.stage2
    assert isinstance(s2, ShardedStage2)
    pairs = [sh.pairs_scored for sh in s2.shards]
    assert min(pairs) > 0.5 * max(pairs)   # one root cohort, and still both shards score


def test_a_quiet_window_reports_nothing(traffic: list[bytes]) -> None:
    """What crosses between shards grows with anomalies, not with cohorts: clean windows
    send an empty report (a few bytes)."""
    pipe = Pipeline(load_config(None, env=False), shards=2)
    s2 = pipe.stage2
    assert isinstance(s2, ShardedStage2)
    for i in range(0, len(traffic) // 4, 4096):   # the first hour: warm-up, no incident yet
        pipe.feed_many(traffic[i:i + 4096])
    assert s2.windows_closed > 20
    # Two reports a window (one per shard), each a window number, a shard and two empty lists.
    assert 0 < s2.report_bytes <= 16 * 2 * s2.windows_closed


def _restored(peer: Peer, came: list[bytes] | None = None) -> Peer:
    """A successor of ``peer`` from what the worker writes to its table: each route key's
    state, then the exchange state (which queues the open window's report again). With
    ``came``: each route key's models only, and the input as it came (every partial the
    peer took, scored or not), as the worker's input records hold it."""
    fresh = type(peer)(peer.config, peer.index, peer.count)
    fresh.ran_ahead = peer.ran_ahead   # (per process: kept here to count over the run)
    fresh.restored_ahead = peer.restored_ahead + bool(peer.ahead)
    for route in sorted(routes(peer)):
        load_route(fresh, dump_route(peer, route, "models" if came is not None else "all"))
    fresh.load_exchange(peer.dump_exchange())
    if came is not None:
        fresh.restore_input([decode_partial(b) for b in came])
        # The input not scored yet, as a restore of the whole state holds it (what the
        # worker keeps records of, and what its next scoring reads).
        assert _pending(fresh) == _pending(_restored(peer))
    return fresh


def _pending(peer: Peer) -> dict[int, dict[tuple[int, tuple[str, ...]], bytes]]:
    return {w: {k: encode(p) for k, p in slot.items()} for w, slot in peer.pending.items()
            if slot}


class _Peer(Peer):
    restored_ahead = 0   # restores while the peer had run ahead


def _peer_alerts(lines: list[bytes], n: int, lag: bool, restore_every: int = 0,
                 peer: type[Peer] = _Peer, as_came: bool = False
                 ) -> tuple[list[list[bytes]], list[Peer]]:
    """The lines through stage 1 and ``n`` peers, the way the stream carries them: coarser
    partials to every peer, a finest one to its owner, hits to every peer, and each peer's
    reports to every peer; with ``lag`` a report arrives only after the next batch, so
    windows and hits wait at the barrier; with ``restore_every`` k, peer 0 is replaced by a
    successor from its saved state every k batches (``as_came``: its input saved as it came,
    see :func:`_restored`)."""
    cfg = load_config(None, env=False)
    s1 = Stage1(cfg)
    peers = [peer(cfg, i, n) for i in range(n)]
    out: list[list[bytes]] = [[] for _ in peers]
    late: list[bytes] = []
    came: list[bytes] = []   # peer 0's input as it came (what it took)

    def deliver(reports: list[bytes]) -> None:
        for r in reports:
            for i, peer in enumerate(peers):
                out[i] += [msgspec.json.encode(a) for a in peer.receive(r)]

    def step(hits: list[RuleHit], watermark: float | None, partials: list[Partial]) -> None:
        nonlocal late
        for p in partials:
            wire = encode(p)
            for i, peer in enumerate(peers):
                if peer.holds(p.level, p.cohort):
                    dropped = peer.late_partials
                    peer.add_partial(decode_partial(wire))
                    if i == 0 and peer.late_partials == dropped:
                        came.append(wire)
        for i, peer in enumerate(peers):
            out[i] += [msgspec.json.encode(a) for a in peer.apply(hits, watermark)]
        if lag:
            deliver(late)
            late = [r for peer in peers for r in peer.take_outbox()]
        while any(peer.outbox for peer in peers):
            deliver([r for peer in peers for r in peer.take_outbox()])

    for i in range(0, len(lines), 4096):
        if restore_every and (i // 4096) % restore_every == restore_every - 1:
            peers[0] = _restored(peers[0], came if as_came else None)
        o = s1.feed_many(lines[i:i + 4096])
        watermark, partials = None, []
        if s1.wm.due():
            partials = s1.drain()
            if partials:
                watermark = s1.wm.closed
        step(sorted(o.hits, key=lambda h: h.ts), watermark, partials)
    o = s1.finish()
    rest = s1.agg.drain_complete()   # before the watermark it moves
    step(sorted(o.hits, key=lambda h: h.ts), s1.wm.closed, rest)
    for _ in range(100_000):   # the windows held at the barrier, one report hop at a time
        if not late:
            break
        step([], None, [])
    return out, peers


@pytest.mark.parametrize(("n", "lag", "restore"), [(2, False, 0), (2, True, 0), (3, True, 0),
                                                   (2, True, 3)])
def test_peers_emit_one_stage2s_alerts_once(traffic: list[bytes], n: int, lag: bool,
                                            restore: int) -> None:
    """Each stage-2 partition's peer, exchanging only reports, emits exactly the alerts of
    one Stage2 that fall to it (those of the cohorts it owns), in the same order: together,
    every alert once; also when a peer is restored from its saved state while others wait
    on its report."""
    want, _ = _alerts(traffic, 1)
    got, peers = _peer_alerts(traffic, n, lag, restore)
    mine = [[a for a in want
             if shard_of(tuple(msgspec.json.decode(a)["cohort"].values()), n) == i]
            for i in range(n)]
    assert all(mine)   # every peer emits some
    assert got == mine
    assert all(p.open is None and not p.inbox and not p.ahead for p in peers)
    pairs = [p.pairs_scored for p in peers]
    assert min(pairs) > 0.5 * max(pairs)
    if lag:   # waiting on reports, the peers ran ahead (and a restore found one ahead)
        assert all(p.ran_ahead for p in peers)
        if restore:
            assert peers[0].restored_ahead  # type: ignore[attr-defined]


def test_a_peer_restored_from_its_input_as_it_came_emits_the_same(traffic: list[bytes]) -> None:
    """The worker saves stage 2's input as it came, a record per save that outlives windows
    scored since (decision 0010): a successor given every partial its peer took, scored or
    not, merges only what is not scored yet (not the open window's, not the finest cohorts'
    of windows run ahead on, the coarser ones' of those) and emits the same alerts."""
    want, _ = _alerts(traffic, 1)
    got, peers = _peer_alerts(traffic, 2, lag=True, restore_every=3, as_came=True)
    mine = [[a for a in want if shard_of(tuple(msgspec.json.decode(a)["cohort"].values()), 2)
             == i] for i in range(2)]
    assert got == mine
    assert peers[0].restored_ahead  # type: ignore[attr-defined]


@pytest.mark.parametrize("ignored", ["hysteresis", "young", "values"])
def test_peers_run_ahead_over_quiet_windows_and_stop_where_deciding_matters(
        traffic: list[bytes], ignored: str) -> None:
    """Waiting on a window's reports, a peer runs ahead over the windows whose finest
    cohorts deciding it cannot change, and stops at the others: a cohort near its threshold
    with a signal that may fire (hysteresis), a young cohort on its parent's baseline past
    the first window, values a firing signal's detection would look at. Each stop is needed:
    a peer that runs past one kind of them emits other alerts than one Stage2."""
    want, _ = _alerts(traffic, 1)
    mine = [[a for a in want
             if shard_of(tuple(msgspec.json.decode(a)["cohort"].values()), 2) == i]
            for i in range(2)]
    got, peers = _peer_alerts(traffic, 2, lag=True)
    assert got == mine
    assert all(p.ran_ahead > p.windows_closed // 4 for p in peers)
    assert all(sum(p.held_back.values()) for p in peers)
    assert any(p.held_back.get(ignored) for p in peers)

    class Past(_Peer):
        def _unsettled(self, w: int, may: dict[tuple[int, tuple[str, ...]], set[str]]
                       ) -> str:
            why = super()._unsettled(w, may)
            return "" if why == ignored else why

    got, _ = _peer_alerts(traffic, 2, lag=True, peer=Past)
    assert got != mine


def test_a_peer_loading_a_whole_tree_keeps_only_its_own_finest_cohorts(
        traffic: list[bytes]) -> None:
    """State written before the split holds a route key's whole tree: a peer that loads it
    keeps every coarser cohort and only the finest ones it owns (else two peers score one)."""
    _, pipe = _alerts(traffic[: len(traffic) // 2], 1)
    whole = pipe.stage2
    peer = Peer(whole.config, 0, 2)
    for route in sorted(routes(whole)):
        load_route(peer, dump_route(whole, route))
    peer.prune()
    fin = len(whole.levels) - 1
    assert {k for k in peer.models if k[0] < fin} == {k for k in whole.models if k[0] < fin}
    mine = {k for k in whole.models if k[0] == fin and shard_of(k[1], 2) == 0}
    assert mine and {k for k in peer.models if k[0] == fin} == mine


@pytest.fixture(scope="module")
def leading_traffic(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = tmp_path_factory.mktemp("leading")
    simulate(out, hours=3, seed=3, rate=40.0,
             scenarios=["escalation_surge", "entropy_collapse", "prompt_churn",
                        "canary_regression"])
    return Path(out / "traces.jsonl").read_bytes().splitlines()


@pytest.mark.parametrize(("n", "lag"), [(2, True), (3, False)])
def test_peers_emit_each_leading_indicator_alert_once(leading_traffic: list[bytes], n: int,
                                                      lag: bool) -> None:
    """The leading indicators of root cohorts (a canary gap compares an app's canary and
    production, replicated on every peer): each alert is emitted once, by the owner of its
    cohort, as one Stage2 gives it."""
    want, _ = _alerts(leading_traffic, 1)
    signals = {msgspec.json.decode(a)["signal"] for a in want}
    assert {"canary_gap", "prompt_churn", "escalation_rate", "output_entropy"} <= signals
    got, _ = _peer_alerts(leading_traffic, n, lag)
    mine = [[a for a in want
             if shard_of(tuple(msgspec.json.decode(a)["cohort"].values()), n) == i]
            for i in range(n)]
    assert got == mine
    assert sorted(a for g in got for a in g) == sorted(want)


def _gap_lines(tenant: str, windows: int = 70, at: int = 50) -> list[bytes]:
    """Production (one tenant) moving to a new model version at window ``at`` whose refusals
    are 30 % (were 5 %) while its canary holds, one window per line: production pages on its
    own, and the canary gap names what production's alert names (``Stage2._paged``), not the
    environments' version difference."""
    t0, size = 1_767_225_600.0, 60.0
    lines = []
    for w in range(windows + 3):
        evs = []
        for env, calls in (("production", 600), ("canary", 60)):
            drift = env == "production" and at <= w < windows
            refusals = round(calls * (0.3 if drift else 0.05))
            evs += [{"ts": t0 + w * size + 30 + i * 0.01, "operation": "chat",
                     "tenant": tenant, "app": "a", "environment": env,
                     "refusal": i < refusals, "trace_id": f"{w:08x}{i:08x}{0:016x}",
                     "prompt_version": f"{env}-v1", "model_version": "m2" if drift else "m1"}
                    for i in range(calls if w < windows else 1)]
        lines.append(orjson.dumps(evs))
    return lines


@pytest.mark.parametrize("n", [2, 3])
def test_peers_name_productions_change_on_the_canary_gap(n: int) -> None:
    """The canary gap's suspected change taken from production's active alert: every peer
    holds a replica of the lifecycle, whose incidents carry the suspected change of the
    owner's report, so the peer that emits the gap names what one Stage2 names when another
    peer owns the production cohort that pages."""
    tenant = next(t for t in (f"t{i}" for i in range(20))
                  if shard_of((t, "a", "production"), n) != shard_of(("a", "canary"), n))
    lines = _gap_lines(tenant)
    want, _ = _alerts(lines, 1)
    decoded = [msgspec.json.decode(a) for a in want]
    gap = [a for a in decoded if a["signal"] == "canary_gap" and a["status"] == "firing"]
    own = [a for a in decoded if a["signal"] == "refusal_rate"
           and a["cohort"] == {"tenant": tenant, "app": "a", "environment": "production"}]
    assert gap and own
    assert gap[0].get("suspected_change", {}).get("now") == "m2"
    assert gap[0]["suspected_change"] in [a.get("suspected_change") for a in own]
    got, _ = _peer_alerts(lines, n, lag=True)
    mine = [[a for a in want
             if shard_of(tuple(msgspec.json.decode(a)["cohort"].values()), n) == i]
            for i in range(n)]
    assert got == mine
