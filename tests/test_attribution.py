"""Issue 19: the suspected change named by the events that carry the anomaly.

Per-value counting in stage 1 (exact, order-free, bounded), the attribution in stage 2, and
the issue's scenarios through `detector simulate | replay | evaluate`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from detector.core.aggregator import Aggregator
from detector.core.alert import alert_record
from detector.core.events import decode
from detector.core.partials import (
    MAX_VALUES,
    OTHER,
    SEP,
    Partial,
    Versions,
    decode_partial,
    encode,
    merge,
    split_values,
)
from detector.core.pipeline import Pipeline
from detector.core.signals import EVENTS, REFUSAL
from tests.traffic import T0

DETECTOR = [sys.executable, "-m", "detector.cli"]
ISSUE_19 = ("two_changes", "canary_version", "tool_version", "fleet_then_app")


def _events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ev: dict[str, Any] = {"ts": T0 + i * 0.1, "operation": rng.choice(("chat", "execute_tool")),
                              "tenant": rng.choice(("a", "b")), "app": "x",
                              "trace_id": f"{rng.getrandbits(128):032x}"}
        for f, vals in (("model", ("m", "n")), ("model_version", ("1", "2", "3")),
                        ("prompt_version", ("v1", "v2")), ("policy_version", ("p",))):
            if rng.random() < 0.9:
                ev[f] = rng.choice(vals)
        if ev["operation"] == "chat":
            ev["refusal"] = rng.random() < 0.2
        else:
            ev["tool_name"] = rng.choice(("search", "email"))
        out.append(ev)
    return out


def _value(ev: dict[str, Any], f: int) -> str:
    if f == 0:
        if "model" not in ev and "model_version" not in ev:
            return "unknown"
        return f"{ev.get('model', 'unknown')}{SEP}{ev.get('model_version', 'unknown')}"
    return ev.get(("", "prompt_version", "policy_version", "tool_name")[f], "unknown")


def test_values_count_each_value_exactly_and_merge_in_any_order(config) -> None:
    """Each value's events and refusals, as stage 1 hands them out, are what the events
    say; flushes of one window merged in any order give the same partial."""
    evs = _events(600, seed=3)
    agg = Aggregator(config)
    flushes: list[list[Partial]] = []
    for i in range(0, len(evs), 150):   # one window, handed out in four increments
        for ev in evs[i:i + 150]:
            agg.add(decode(orjson.dumps(ev))[0][0])
        flushes.append([p for p in agg.flush_open() if p.level == 0])
    parts = [p for f in flushes for p in f]
    forward = parts[0]
    for p in parts[1:]:
        forward = merge(forward, decode_partial(encode(p)), k=20)
    backward = parts[-1]
    for p in reversed(parts[:-1]):
        backward = merge(backward, p, k=20)
    assert forward.counts == backward.counts
    assert all(split_values(forward.values[f], forward.counts)
               == split_values(backward.values[f], backward.counts) for f in range(4))
    for f in range(4):
        got = split_values(forward.values[f], forward.counts)
        want: dict[str, list[int]] = {}
        for ev in evs:
            c = want.setdefault(_value(ev, f), [0, 0])
            c[0] += 1
            c[1] += ev.get("refusal") is True
        if f == 3:
            assert "unknown" in got   # chats: no tool
        assert {v: [c.get(EVENTS, 0), c.get(REFUSAL, 0)] for v, c in got.items()} == want


def test_values_are_bounded_whatever_producers_send(config) -> None:
    agg = Aggregator(config)
    for i in range(3000):   # a new prompt version on every event
        agg.add(decode(orjson.dumps({"ts": T0 + i / 100, "operation": "chat", "app": "x",
                                     "prompt_version": f"v{i}", "refusal": i % 7 == 0}))[0][0])
    (p,) = [p for p in agg.drain_all() if p.level == 0]
    prompts = split_values(p.values[1], p.counts)
    assert len(prompts) <= MAX_VALUES and OTHER in prompts
    assert sum(c[EVENTS] for c in prompts.values()) == p.counts[EVENTS] == 3000
    assert sum(c.get(REFUSAL, 0) for c in prompts.values()) == p.counts[REFUSAL]
    assert len(encode(p)) < 4000


def test_partials_cross_versions_of_the_wire_both_ways(config) -> None:
    """A partial without values (an older stage 1) is read, and merges its events under
    "unknown"; an older stage 2 reads today's partials (the field is a trailing one)."""

    class Before(msgspec.Struct, array_like=True):   # Partial as it was before values
        window: int
        level: int
        cohort: tuple[str, ...]
        counts: list[int]
        samples: dict[int, list[str]]
        top: dict[int, list[tuple[int, str]]]
        versions: dict[Versions, int]
        route: str = ""

    agg = Aggregator(config)
    for ev in _events(50, seed=1):
        agg.add(decode(orjson.dumps(ev))[0][0])
    (new,) = [p for p in agg.drain_all() if p.level == 0]
    old = msgspec.msgpack.decode(encode(new), type=Before)
    assert old.counts == new.counts and old.versions == new.versions
    read = decode_partial(msgspec.msgpack.encode(old))
    assert read.values == {} and read.counts == new.counts
    both = merge(read, new, k=20)
    prompts = split_values(both.values[1], both.counts)
    assert prompts["unknown"][EVENTS] >= new.counts[EVENTS]   # the older one's, all of them


def _mix(minutes: int, share: Callable[[int], float], bad: Callable[[int], float],
         good: float = 0.04, per_minute: int = 300, seed: int = 5) -> Iterator[bytes]:
    """Chats of one cohort: ``share(m)`` of them on prompt v2 refusing at ``bad(m)``, the rest
    on v1 refusing at ``good``."""
    rng = random.Random(seed)
    for m in range(minutes):
        for i in range(per_minute):
            v2 = rng.random() < share(m)
            yield orjson.dumps({
                "ts": T0 + m * 60 + (i + 0.5) * 60 / per_minute, "operation": "chat",
                "trace_id": f"{rng.getrandbits(128):032x}", "tenant": "acme", "app": "agent",
                "model": "m", "model_version": "1", "policy_version": "p1",
                "prompt_version": "v2" if v2 else "v1",
                "refusal": rng.random() < (bad(m) if v2 else good)})


def _alerts(config, msgs: Iterator[bytes]) -> list[dict[str, Any]]:
    pipe = Pipeline(config)
    out = []
    for m in msgs:
        out += map(alert_record, pipe.feed(m))
    return out + [alert_record(a) for a in pipe.finish()]


def test_a_canary_pages_through_its_events_and_names_itself(config) -> None:
    """5 % of traffic on a new prompt refusing 40 % of the time: the cohort's rate goes from
    4 % to 6 %, which its baseline alone does not page; v2's events do."""
    msgs = list(_mix(70, share=lambda m: 0.05 if m >= 40 else 0.0, bad=lambda m: 0.4))
    off = msgspec.structs.replace(config, alerting=msgspec.structs.replace(
        config.alerting, attribution_detects=False))
    assert [a for a in _alerts(off, iter(msgs)) if a["signal"] == "refusal_rate"] == []
    ref = [a for a in _alerts(config, iter(msgs))
           if a["signal"] == "refusal_rate" and a["status"] == "firing"]
    assert ref and {a["severity"] for a in ref} >= {"sev2"}
    for a in ref:
        ch = a["suspected_change"]
        assert (ch["field"], ch["baseline"], ch["now"]) == ("prompt_version", "v1", "v2")
        assert ch["observed_with"] > 0.25 > 0.06 > ch["observed_without"]
        assert 0.0 < ch["share_of_events"] < 0.15 and ch["score"] >= 5.0


def test_a_steady_mix_of_versions_is_no_change_and_pages_nothing(config) -> None:
    """Two prompt versions from the start, one refusing three times as often: that is the
    cohort's normal, not a change to roll back."""
    assert _alerts(config, _mix(90, share=lambda m: 0.3, bad=lambda m: 0.12)) == []


def test_no_value_is_named_without_evidence(config) -> None:
    """A refusal spike with a benign prompt deploy long before it, on all traffic: the
    prompt's events refused like everyone's until the spike, so nothing is named."""
    msgs = _mix(70, share=lambda m: 1.0 if m >= 25 else 0.0,
                bad=lambda m: 0.3 if m >= 55 else 0.04)
    ref = [a for a in _alerts(config, msgs) if a["signal"] == "refusal_rate"
           and a["status"] == "firing"]
    assert ref
    for a in ref:
        assert a["suspected_change"] is None
        assert a["suspected_change_reason"].startswith("no changed value carries it")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DETECTOR, *args], capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def issue19(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict], Path]:
    out = tmp_path_factory.mktemp("issue19")
    _run("simulate", "--out", str(out), "--hours", "3", "--seed", "3",
         *(x for name in ISSUE_19 for x in ("--scenario", name)))
    alerts = out / "alerts.jsonl"
    _run("replay", str(out / "traces.jsonl"), "--alerts-out", str(alerts), "--quiet")
    report = json.loads(_run("evaluate", "--labels", str(out / "labels.json"), "--alerts",
                             str(alerts), "--json").stdout)
    return report, [json.loads(x) for x in alerts.read_text().splitlines()], out


def test_the_harmful_value_is_named_at_every_level_with_its_evidence(issue19) -> None:
    report, alerts, _ = issue19
    by = {i["scenario"]: i for i in report["incidents"]}
    assert sorted(by) == sorted(ISSUE_19)
    s = report["summary"]
    assert s["recall"] == 1.0 and s["severity_accuracy"] == 1.0
    assert s["suspected_change_correct"] == s["suspected_change_checked"] == 4
    byid = {a["id"]: a for a in alerts if a["status"] == "firing"}
    labels = {i["id"]: i for i in json.loads((issue19[2] / "labels.json").read_text())
              ["incidents"]}
    for inc in report["incidents"]:
        want = labels[inc["id"]]["suspected_change"]
        levels = set()
        for aid in inc["alert_ids"]:
            ch = byid[aid]["suspected_change"]
            assert (ch["field"], ch["baseline"], ch["now"]) == (
                want["field"], want["baseline"], want["now"]), inc["scenario"]
            assert ch["observed_with"] > 3 * ch["observed_without"] and ch["score"] >= 3.0
            levels.add(len(byid[aid]["cohort"]))
        assert levels, inc["scenario"]
    # The earlier changes were in the look-back, and in the alerts' windows: not named first.
    two = by["two_changes"]
    assert all(n.startswith("model_version ") for n in two["suspected_changes_named"])


def test_the_canary_is_found_only_through_its_events(issue19, tmp_path: Path) -> None:
    _, _, out = issue19
    cfg = tmp_path / "off.toml"
    cfg.write_text((Path(__file__).parents[1] / "config" / "detector.toml").read_text()
                   .replace("attribution_detects = true", "attribution_detects = false"))
    alerts = tmp_path / "alerts.jsonl"
    _run("replay", str(out / "traces.jsonl"), "--config", str(cfg), "--alerts-out",
         str(alerts), "--quiet")
    report = json.loads(_run("evaluate", "--labels", str(out / "labels.json"), "--alerts",
                             str(alerts), "--json").stdout)
    by = {i["scenario"]: i for i in report["incidents"]}
    assert not by["canary_version"]["detected"]
    assert all(by[n]["detected"] for n in ISSUE_19 if n != "canary_version")


def test_a_worker_that_takes_over_keeps_the_evidence(config) -> None:
    """Stage-2 state carries each cohort's per-value counters: a worker that loads it
    mid-incident names the canary as the one that never stopped does."""
    from detector.core import snapshot
    from detector.core.stage2 import Stage2

    msgs = list(_mix(70, share=lambda m: 0.05 if m >= 40 else 0.0, bad=lambda m: 0.4))
    whole = _alerts(config, iter(msgs))
    pipe = Pipeline(config)
    out = []
    for i, m in enumerate(msgs):
        if i == 45 * 300:   # minute 45: the canary's events have been failing for 5 minutes
            (route,) = snapshot.routes(pipe.stage2)
            blob = snapshot.dump_route(pipe.stage2, route)
            pipe.stage2 = Stage2(config)
            snapshot.load_route(pipe.stage2, blob)
            assert snapshot.dump_route(pipe.stage2, route) == blob
        out += map(alert_record, pipe.feed(m))
    out += [alert_record(a) for a in pipe.finish()]
    assert out == whole and any(a["suspected_change"] for a in out)
    bad = msgspec.msgpack.decode(zlib.decompress(blob))
    bad["models"][0][-1] = [2, 0, 0, 2.0, 0, 120, 0, b"", [], b"", {}]   # a decay past 1
    with pytest.raises(ValueError, match="attribution trail"):
        snapshot.load_route(Stage2(config), zlib.compress(msgspec.msgpack.encode(bad)))


def test_a_trail_keeps_own_counters_only_for_changes_within_the_look_back() -> None:
    """A cohort on one version a field and a few tools costs a name and a row per value; a
    value that comes later has counters of its own until it is older than the look-back;
    the lazy decay's scale is folded in when it grows, the decayed sums unchanged."""
    from detector.core.attribution import Trail, _at

    t = Trail(0, decay=0.5, settle=5, lookback=20)
    steady = {0: {"m\x1f1": {}}, 1: {"v1": {}}, 2: {"p": {}},
              3: {"a": {0: 5, 2: 5}, "b": {0: 3, 2: 3}, "unknown": {}}}
    counts = [20, 12, 8, 1]
    for w in range(11):
        t.add(w, steady, counts)
        t.settle(w)
    assert t.vecs is None and t.candidates(10, 20, 5) == []
    assert len(msgspec.msgpack.encode(t.state())) < 250
    canary = {**steady, 1: {"v1": {}, "v2": {0: 2, 3: 1}}}
    t.add(11, canary, counts)
    t.settle(11)
    assert t.candidates(11, 20, 5) == [(1, "v2")] and t.first(1, "v2") == 11
    for w in range(12, 200):   # 0.5 ** -100 passes the rescale point: folded in
        t.add(w, steady, counts)
        t.settle(w)
    assert t.vecs is None and t.candidates(199, 20, 5) == [] and t.first(1, "v2") == 11
    assert t.ref > 0   # folded once at least
    view = t._vec(None, 199)
    assert view is not None and _at(view, 0) == pytest.approx(20 / (1 - 0.5), rel=1e-5)


def test_a_trail_takes_a_month_of_silence() -> None:
    """Traffic that resumes after 30 days: the decayed sums are folded to nothing, no
    overflow of the lazy decay's scale."""
    from detector.core.attribution import Trail, _at

    t = Trail(0, decay=0.977, settle=5, lookback=120)
    vals = {1: {"v1": {}}}
    for w in (*range(10), *range(43200, 43210)):
        t.add(w, vals, [10, 10, 1])
        t.settle(w)
    view = t._vec(None, 43209)
    assert view is not None and t.ref >= 43200
    assert _at(view, 0) == pytest.approx(10 * (1 - 0.977 ** 10) / (1 - 0.977), rel=1e-5)
