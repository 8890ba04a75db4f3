"""Synthetic trace traffic with labelled incidents, for tuning and scoring the detector.

``simulate`` writes ``traces.jsonl`` (JSON Lines of trace events, a few lines as batches and
a few malformed on purpose) and ``labels.json`` (what was injected where and when); with
``--format otlp_json|otlp_proto`` also the same events as OpenTelemetry GenAI spans
(``traces.otlp.jsonl`` / ``traces.otlp.pb``, see :func:`detector.lab.genai_spans.write_otlp`).
The world (apps, tenants, scenarios) and the incident planner live in :mod:`detector.lab.scenarios`.

Output is byte-identical for the same (seed, hours, rate, scenarios, start): every draw comes
from ``random.Random`` instances seeded from ``seed``, and events leave a time-ordered heap
as soon as no later trace can precede them, so memory stays small at any length.

>>> import json, pathlib, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     s = simulate(pathlib.Path(d), hours=0.1, rate=5.0, scenarios=[])
...     labels = json.loads((pathlib.Path(d) / "labels.json").read_text())
>>> s["incidents"], labels["incidents"], labels["events"] == s["events"] > 1000
(0, [], True)
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from detector.core.timestamps import rfc3339
from detector.lab.scenarios import (
    DEFAULT_SCENARIOS,
    SCENARIOS,
    WARMUP_S,
    Cohort,
    Effect,
    PlannedIncident,
    Scenario,
    World,
    cycle_factor,
    daily_factor,
    plan,
)
from detector.lab.tracefile import TraceWriter

__all__ = ["SCENARIOS", "Scenario", "add_arguments", "run", "simulate"]

DEFAULT_START: Final = datetime(2026, 1, 5, tzinfo=UTC)
RAMP_STEP_S: Final = 30.0
CYCLE_STEP_S: Final = 300.0  # a daily cycle moves in steps this far apart
CYCLE_STEPS: Final = 24      # ...and a shorter one in at least this many steps a cycle


def _cycle_step(s: Scenario) -> float:
    return min(CYCLE_STEP_S, s.cycle_period / CYCLE_STEPS)
#: A person reverts an answer this many seconds after it (uniform between the two).
OVERRIDE_LAG_S: Final = (5.0, 120.0)
_SORT: Final = orjson.OPT_SORT_KEYS
_ERRORS: Final = ("timeout", "rate_limited", "upstream_error", "context_length_exceeded")
_OVERRIDES: Final = ("incorrect_answer", "policy_concern", "customer_escalation",
                     "wrong_action", "tone")
_FORBIDDEN: Final = (("delete_customer_records", "write"), ("export_user_table", "external"),
                     ("modify_permissions", "write"))


class _Rates:
    """The numbers of an app's normal behaviour (AppProfile's) that an Effect may move."""

    __slots__ = ()
    p_refusal: float
    p_textcomp: float
    tools_mean: float
    p_memory: float
    p_pii: float
    p_tox: float
    p_inj: float
    p_jb: float
    p_iv: float
    p_fmt_fail: float
    p_retry: float
    p_error: float
    p_schema_invalid: float
    p_fabricated: float
    p_tool_error: float
    p_override: float
    p_invoke: float
    in_med: float
    out_med: float
    lat_med: float
    p_eval: float
    eval_mult: float
    p_escalate: float
    entropy_med: float


_NUM: Final = tuple(_Rates.__annotations__)


class _Profile(_Rates):
    """Effective behaviour of one cohort right now (app normal + active incident effects)."""

    __slots__ = ("alt", "approvals", "evals", "home", "inc", "json_output", "lat_mult", "mark",
                 "p_safety", "pois_l", "safety_always", "swap", "tools", "volume", *_NUM)
    home: dict[str, Any]   # an event's common fields in the home region
    alt: dict[str, Any]    # the same in the tenant's other region

    def __init__(self, world: World, c: Cohort, versions: dict[str, str],
                 inc: PlannedIncident | None, intensity: float, burst: bool,
                 normal: Effect = (), now: float = 0.0) -> None:
        app = world.apps[c[1]]
        for name in _NUM:
            setattr(self, name, getattr(app, name))
        self.volume, self.lat_mult, self.mark = (2.0 if burst else 1.0), (1.1 if burst else 1.0), ""
        for attr, factor, floor in normal:  # changes that stay: this cohort's normal now
            setattr(self, attr, max(getattr(self, attr) * factor, floor))
        self.inc = inc
        vers = dict(versions)
        self.swap: tuple[str, str, float] | None = None
        if inc is not None:
            change = inc.change_at(now)
            if change is not None and change[0] != "tool_name":
                vers[change[0]] = change[2]
            if inc.scenario.model_to:
                vers["model"] = inc.scenario.model_to
            for attr, factor, floor in inc.scenario.effect:
                base = getattr(self, attr)
                target = max(base * factor, floor)
                setattr(self, attr, base + (target - base) * intensity)
                self.mark = attr
            if inc.scenario.tool_swap and inc.change is not None:
                # Only the new tool's calls carry the effect (the schema-invalid share).
                attr = inc.scenario.effect[0][0]
                self.swap = (inc.change[1], inc.change[2], getattr(self, attr))
                setattr(self, attr, getattr(app, attr))
        self.json_output, self.approvals = app.json_output, app.approvals
        self.safety_always, self.tools, self.evals = app.always_safety, app.tools, app.evaluators
        self.pois_l = math.exp(-self.tools_mean)
        self.p_safety = self.p_pii + self.p_tox + self.p_inj + self.p_jb
        tenant = c[0] or ""
        home, alt = world.regions[tenant]
        common = {"tenant": tenant, "app": app.name, "environment": c[2], "model": app.model,
                  **vers}
        self.home, self.alt = {**common, "region": home}, {**common, "region": alt}




class _Generator:
    """Poisson arrivals of traces over cohorts; each trace becomes 1..n events."""

    def __init__(self, world: World, k: float, incidents: list[PlannedIncident],
                 bursts: list[tuple[float, float, str]], writer: TraceWriter, seed: int) -> None:
        self.world, self.k, self.writer = world, k, writer
        rng = random.Random(f"{seed}:traffic")
        self.rng, self.rnd, self.gauss, self.bits = rng, rng.random, rng.gauss, rng.getrandbits
        # Evaluation scores draw from their own generator: the rest of the traffic is what
        # it was before they existed.
        erng = random.Random(f"{seed}:evals")
        self.erand, self.egauss = erng.random, erng.gauss
        # ...and so do the leading indicators' fields.
        irng = random.Random(f"{seed}:indicators")
        self.irand, self.igauss = irng.random, irng.gauss
        self.heap: list[tuple[int, int, dict[str, Any]]] = []
        self.seq = 0
        self.load = 1.0
        self.incidents = [i for i in incidents if i.scenario.kind != "hard_rule"
                          and i.scenario.span == "incident"]
        self.lasting = [i for i in incidents if i.scenario.span != "incident"
                        or i.scenario.background]
        self.bursts = bursts
        self.index: dict[Cohort, int] = {c: n for n, c in enumerate(world.cohorts)}
        self._cache: dict[tuple[Any, ...], _Profile] = {}
        self.profiles: list[_Profile] = []
        self.cum: list[float] = []
        self.split: dict[int, tuple[float, _Profile]] = {}   # cohort -> (its canary's share, rest)

    def refresh(self, now: float) -> None:
        """Recompute every cohort's profile and traffic weight for time ``now``."""
        versions = {a: dict(p.versions) for a, p in self.world.apps.items()}
        for i in self.incidents + self.lasting:  # benign deploys stay; the rest roll back
            if i.scenario.kind == "benign" and i.start <= now and i.change:
                versions[i.cohort[1]][i.change[0]] = i.change[2]
            if i.prelude is not None and i.prelude[1] <= now:   # an earlier change that stays
                for app, value in i.prelude[2].items():
                    versions[app][i.prelude[0]] = value
        active = [i for i in self.incidents if i.start <= now < i.end]
        burst_apps = {app for b0, b1, app in self.bursts if b0 <= now < b1}
        self.profiles, self.cum, total = [], [], 0.0
        self.split = {}
        for c, share in zip(self.world.cohorts, self.world.share, strict=True):
            inc = next((i for i in active if i.covers(c)), None)
            normal = self._normal(c, now)
            intensity = 1.0
            if inc is not None and inc.ramp_end is not None:
                intensity = min(1.0, (now - inc.start) / (inc.ramp_end - inc.start))
            burst = c[1] in burst_apps and c[2] == "production"
            step = inc.step(now) if inc is not None else 0
            key = (c, tuple(versions[c[1]].values()), inc and inc.id, intensity, burst, normal,
                   step)
            prof = self._cache.get(key)
            if prof is None:
                prof = self._cache[key] = _Profile(self.world, c, versions[c[1]], inc,
                                                   intensity, burst, normal, now)
            if inc is not None and inc.scenario.share < 1.0:
                # A canary: this share of the cohort's traces runs the change, the rest not.
                rest = _Profile(self.world, c, versions[c[1]], None, 1.0, burst, normal, now)
                self.split[len(self.profiles)] = (inc.scenario.share, rest)
            self.profiles.append(prof)
            total += share * prof.volume
            self.cum.append(total)

    def _normal(self, c: Cohort, now: float) -> Effect:
        """Effects of lasting scenarios on ``c`` at ``now``: a background from the first
        event, a change that stays from its start, a daily cycle all along."""
        out: list[tuple[str, float, float]] = []
        for i in self.lasting:
            if not i.covers(c):
                continue
            out += i.scenario.background
            if i.scenario.span == "incident" or now < i.start:
                continue
            cyc = (round(cycle_factor(now, i.scenario.cycle, i.scenario.cycle_period), 4)
                   if i.scenario.cycle else 1.0)
            out += [(a, f * cyc, fl) for a, f, fl in i.scenario.effect]
        return tuple(out)

    def push(self, ts_ms: int, ev: dict[str, Any]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (ts_ms, self.seq, ev))

    def flush(self, before_ms: float) -> None:
        heap, put = self.heap, self.writer.put
        while heap and heap[0][0] < before_ms:
            ts_ms, _, ev = heapq.heappop(heap)
            put(ts_ms, ev)

    def run(self, start: float, end: float, changes: list[float],
            forced: list[tuple[float, PlannedIncident]]) -> None:
        rnd, cum, expo = self.rnd, self.cum, self.rng.expovariate
        ci = fi = 0
        sec = math.floor(start)
        t = float(sec)
        rate = 0.0
        while sec < end:
            if ci < len(changes) and changes[ci] <= sec:
                while ci < len(changes) and changes[ci] <= sec:
                    ci += 1
                self.refresh(sec)
                cum = self.cum
            f = daily_factor(sec)
            self.load = 0.95 + 0.1 * f  # latency rises mildly with load
            rate = self.k * f * cum[-1]
            nxt = sec + 1
            while True:
                t += expo(rate)
                if t >= nxt:
                    break
                while fi < len(forced) and forced[fi][0] <= t:
                    ft, inc = forced[fi]
                    fi += 1
                    self.trace(ft, self.profiles[self.index[inc.cohort]], inc)
                self.flush(t * 1000.0)
                idx = min(bisect.bisect_right(cum, rnd() * cum[-1]), len(cum) - 1)
                prof = self.profiles[idx]
                if self.split and idx in self.split and rnd() >= self.split[idx][0]:
                    prof = self.split[idx][1]   # (only canaries draw: other seeds unchanged)
                self.trace(t, prof, None)
            sec, t = nxt, float(nxt)
        self.flush(end * 1000.0)  # events past the end of the run are dropped
        self.heap.clear()

    def trace(self, t: float, p: _Profile, force: PlannedIncident | None) -> None:
        rnd, gauss, bits, exp, push = self.rnd, self.gauss, self.bits, math.exp, self.push
        tid = f"{bits(128):032x}"
        base = p.home if rnd() >= 0.05 else p.alt
        kind = force.scenario.name if force is not None else ""
        textcomp = kind == "" and rnd() < p.p_textcomp
        ev = base.copy()
        ev["operation"] = "text_completion" if textcomp else "chat"
        ev["trace_id"], ev["span_id"] = tid, f"{bits(64):016x}"
        lat = p.lat_med * p.lat_mult * self.load * exp(0.5 * gauss())
        ev["input_tokens"] = int(p.in_med * exp(0.6 * gauss()) * (0.3 if textcomp else 1.0))
        refusal = error = False
        if rnd() < p.p_error:
            error, out, finish = True, 0, "error"
            ev["error_type"] = _ERRORS[int(rnd() * 4)]
        elif rnd() < p.p_refusal:
            refusal, out = True, int(20 + 60 * rnd())
            finish = "content_filter" if rnd() < 0.3 else "stop"
        else:
            out = int(p.out_med * exp(0.6 * gauss()))
            finish = "length" if rnd() < 0.02 else "stop"
        hit = ""
        r = rnd()
        if r < p.p_safety:
            hit = ("pii" if r < p.p_pii else "toxicity" if r < p.p_pii + p.p_tox else
                   "prompt_injection" if r < p.p_pii + p.p_tox + p.p_inj else "jailbreak")
        if kind == "secret_leak":
            hit = "secret_leak"
        if hit:
            ev["safety_hits"] = [hit]
        elif p.safety_always:
            ev["safety_hits"] = []
        ev["instruction_violation"] = violation = rnd() < p.p_iv
        fmt_bad = False
        if p.json_output and not error:
            fmt_bad = rnd() < p.p_fmt_fail
            ev["output_format_valid"] = not fmt_bad
        retries = 0 if rnd() >= p.p_retry else (1 if rnd() < 0.75 else 2)
        ev["retries"] = retries
        # Tool calls do not depend on refusal or error, so each incident moves one signal.
        n = 0
        if not textcomp:
            lim, prod = p.pois_l, rnd()
            while prod > lim:
                n += 1
                prod *= rnd()
        if kind in ("unauthorized_tool", "unapproved_action"):
            n = max(n, 1)
        if n and finish == "stop":
            finish = "tool_calls"
        ev["output_tokens"], ev["latency_ms"], ev["finish_reason"] = out, round(lat, 1), finish
        ev["refusal"] = refusal
        if p.evals and not error and self.erand() < p.p_eval:
            ev["eval_scores"] = self._scores(p)
        escalated = False
        if p.entropy_med and not error:
            ev["output_entropy"] = round(p.entropy_med * exp(0.25 * self.igauss()), 3)
        if p.p_escalate:
            ev["escalated"] = escalated = self.irand() < p.p_escalate
        cur = t * 1000.0 + lat
        first_ms = int(cur)
        push(first_ms, ev)
        if force is not None and kind == "secret_leak":
            self._offended(force, first_ms, tid)
        bad_at = int(rnd() * n) if kind in ("unauthorized_tool", "unapproved_action") else -1
        schema_bad = fabricated = False
        tools = p.tools
        for i in range(n):
            name, side = tools[int(rnd() * len(tools))]
            if i == bad_at and kind == "unauthorized_tool":
                name, side = _FORBIDDEN[int(rnd() * len(_FORBIDDEN))]
            elif i == bad_at:
                name, side = ("issue_refund", "write") if rnd() < 0.5 else ("transfer_funds",
                                                                           "external")
            tl = (150.0 if side in ("read", "none") else 400.0) * exp(0.5 * gauss())
            cur += tl
            tev = base.copy()
            tev["operation"], tev["trace_id"] = "execute_tool", tid
            tev["span_id"], tev["latency_ms"] = f"{bits(64):016x}", round(tl, 1)
            tev["tool_name"], tev["tool_side_effect"] = name, side
            tev["tool_authorized"] = not (i == bad_at and kind == "unauthorized_tool")
            if p.approvals and side in ("write", "external"):
                tev["tool_approved"] = not (i == bad_at and kind == "unapproved_action")
            p_invalid = p.p_schema_invalid
            if p.swap is not None and name == p.swap[0]:
                tev["tool_name"], p_invalid = p.swap[1], p.swap[2]
            valid = rnd() >= p_invalid
            fab = rnd() < p.p_fabricated
            tev["schema_valid"], tev["tool_result_fabricated"] = valid, fab
            schema_bad, fabricated = schema_bad or not valid, fabricated or fab
            tev["tool_status"] = "ok" if rnd() >= p.p_tool_error else "error"
            push(int(cur), tev)
            if i == bad_at and force is not None:   # bad_at >= 0 only for a forced trace
                self._offended(force, int(cur), tid)
        memory = not textcomp and rnd() < p.p_memory
        if memory:
            cur += 20.0 * exp(0.3 * gauss())
            mev = base.copy()
            mev["operation"], mev["trace_id"], mev["span_id"] = "memory_write", tid, \
                f"{bits(64):016x}"
            mev["memory_bytes"] = int(1500 * exp(0.7 * gauss()))
            mev["latency_ms"] = round(5.0 + 20.0 * rnd(), 1)
            push(int(cur), mev)
        if not textcomp and rnd() < p.p_invoke:
            aev = base.copy()
            aev["operation"], aev["trace_id"], aev["span_id"] = "invoke_agent", tid, \
                f"{bits(64):016x}"
            aev["latency_ms"] = round(cur + 5.0 - t * 1000.0, 1)
            push(int(cur + 5.0), aev)
        override = not textcomp and rnd() < p.p_override
        if override:  # a person reverts the answer a little later
            oev = base.copy()
            oev["operation"], oev["trace_id"], oev["span_id"] = "human_override", tid, \
                f"{bits(64):016x}"
            oev["override_reason"] = _OVERRIDES[int(rnd() * len(_OVERRIDES))]
            lo, hi = OVERRIDE_LAG_S
            push(int(cur + 1000.0 * lo + 1000.0 * (hi - lo) * rnd()), oev)
        if p.inc is not None and len(p.inc.trace_ids) < 20:
            shown = {"p_refusal": refusal, "p_pii": hit == "pii", "p_inj": hit ==
                     "prompt_injection", "p_iv": violation, "p_fmt_fail": fmt_bad,
                     "p_retry": retries > 0, "p_error": error, "p_schema_invalid": schema_bad,
                     "p_fabricated": fabricated, "tools_mean": n >= 4, "p_memory": memory,
                     "p_override": override, "p_escalate": escalated}.get(p.mark, True)
            if p.mark == "p_refusal" and p.p_refusal < 0.01:
                shown = not refusal  # a refusal collapse: any answered request shows it
            if shown:
                p.inc.trace_ids.append(tid)

    def _scores(self, p: _Profile) -> dict[str, float]:
        """One answer's evaluation scores in [0, 1]; the first evaluator's scaled by the
        profile's eval_mult (an eval-score drop)."""
        g = self.egauss
        return {name: round(min(1.0, max(0.0, mu * (p.eval_mult if i == 0 else 1.0)
                                          + 0.08 * g())), 3)
                for i, (name, mu) in enumerate(p.evals)}

    @staticmethod
    def _offended(inc: PlannedIncident, ts_ms: int, tid: str) -> None:
        inc.first_ms = ts_ms if inc.first_ms is None else min(inc.first_ms, ts_ms)
        inc.last_ms = ts_ms if inc.last_ms is None else max(inc.last_ms, ts_ms)
        if len(inc.trace_ids) < 20:
            inc.trace_ids.append(tid)


def _bursts(rng: random.Random, world: World, incidents: list[PlannedIncident], start: float,
            end: float) -> list[tuple[float, float, str]]:
    """A few benign x2 volume bursts of 1-3 minutes on whole apps, away from incidents."""
    apps = sorted({c[1] for c in world.cohorts})
    out: list[tuple[float, float, str]] = []
    for _ in range(1 + int((end - start) / 10800)):
        for _try in range(20):
            app = rng.choice(apps)
            b0 = start + 60.0 * rng.randrange(max(1, int((end - start) / 60) - 3))
            b1 = b0 + 60.0 * rng.randint(1, 3)
            if not any(i.cohort[1] == app and i.start - 600 < b1 and i.end + 600 > b0
                       for i in incidents):
                out.append((b0, b1, app))
                break
    return sorted(out)


def _drift_point(inc: PlannedIncident) -> float:
    """When the labelled signal has moved half-way to its incident level: the centre of its
    transition, where river's ``ConceptDriftStream`` puts a gradual drift. The start for a
    step; the middle of a ramp; for overrides, which come OVERRIDE_LAG_S after the answers
    they revert, the start plus the mean lag."""
    if inc.ramp_end is not None:
        return (inc.start + inc.ramp_end) / 2
    if any(attr == "p_override" for attr, _, _ in inc.scenario.effect):
        return inc.start + sum(OVERRIDE_LAG_S) / 2
    return inc.start


def _label(inc: PlannedIncident) -> dict[str, Any]:
    sc = inc.scenario
    start_ms, end_ms = round(inc.start * 1000), round(inc.end * 1000)
    if sc.kind == "hard_rule" and inc.first_ms is not None and inc.last_ms is not None:
        start_ms, end_ms = inc.first_ms, inc.last_ms
    tenant, app, env = inc.cohort
    cohort = {"app": app, "environment": env} | ({"tenant": tenant} if tenant else {})
    change = inc.change
    if change is not None and sc.churn:   # the last two of its versions, as churn names them
        last, prev = inc.change_at(inc.end - 1.0), inc.change_at(
            inc.end - 1.0 - (inc.end - inc.start) / (sc.churn + 1))
        change = (change[0], prev[2], last[2]) if last and prev else change
    return {
        "id": inc.id, "scenario": sc.name, "kind": sc.kind, "signals": list(sc.signals),
        "cohort": cohort, "start": rfc3339(start_ms / 1000), "end": rfc3339(end_ms / 1000),
        "expected_severity": sc.expected,
        **({"drift_point": rfc3339(round(_drift_point(inc) * 1000) / 1000)}
           if sc.kind == "drift" else {}),
        **({"max_severity": sc.max_severity} if sc.max_severity else {}),
        **({"max_firing_seconds": sc.max_firing_s} if sc.max_firing_s else {}),
        "suspected_change": ({"field": change[0], "baseline": change[1], "now": change[2]}
                             if change and sc.kind != "hard_rule" else None),
        **({"earlier_change": {"field": inc.prelude[0], "at": rfc3339(inc.prelude[1]),
                               "apps": sorted(inc.prelude[2])}} if inc.prelude else {}),
        **({"rollout_share": sc.share} if sc.share < 1.0 else {}),
        "trace_ids": inc.trace_ids[:20],
    }


def simulate(out_dir: Path, *, hours: float = 4.0, seed: int = 1,
             scenarios: list[str] | None = None, rate: float = 40.0,
             start: datetime = DEFAULT_START, tenants: int = 40) -> dict[str, Any]:
    """Write ``traces.jsonl`` and ``labels.json`` into ``out_dir``; return a summary.

    ``scenarios`` None means :data:`DEFAULT_SCENARIOS`, ``[]`` clean traffic. Raises
    ValueError for bad arguments or when the scenarios do not fit into ``hours``.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if not (hours > 0 and rate > 0):
        raise ValueError("hours and rate must be positive")
    names = sorted(set(DEFAULT_SCENARIOS if scenarios is None else scenarios))
    t0 = float(math.floor(start.timestamp()))
    t1 = t0 + round(hours * 3600.0)
    world = World.build(tenants)
    k = world.trace_rate(rate, t0, t1)
    incidents = plan(names, world, k, seed, t0, t1)
    bursts = _bursts(random.Random(f"{seed}:bursts"), world, incidents, t0, t1)
    changes = sorted({x for i in incidents if i.scenario.kind != "hard_rule"
                      for x in (i.start, i.end)} | {x for b in bursts for x in b[:2]} |
                     {i.prelude[1] for i in incidents if i.prelude is not None} |
                     {i.start + s * RAMP_STEP_S for i in incidents if i.ramp_end
                      for s in range(int((i.ramp_end - i.start) / RAMP_STEP_S) + 1)} |
                     {i.start + s * _cycle_step(i.scenario) for i in incidents
                      if i.scenario.cycle
                      for s in range(int((i.end - i.start) / _cycle_step(i.scenario)) + 1)} |
                     {i.start + s * (i.end - i.start) / (i.scenario.churn + 1)
                      for i in incidents for s in range(1, i.scenario.churn + 1)})
    forced = sorted(((ft, i) for i in incidents for ft in i.offend_at), key=lambda x: x[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    traces, labels_path = out_dir / "traces.jsonl", out_dir / "labels.json"
    with traces.open("wb") as fh:
        writer = TraceWriter(fh, random.Random(f"{seed}:writer"))
        gen = _Generator(world, k, incidents, bursts, writer, seed)
        gen.refresh(t0)
        gen.run(t0, t1, [c for c in changes if c > t0], forced)
        writer.close()
    labels = {
        "seed": seed, "hours": hours, "rate": rate, "start": rfc3339(round(t0 * 1000) / 1000),
        "end": rfc3339(round(t1 * 1000) / 1000), "events": writer.events,
        "malformed_lines": writer.malformed, "window_hint_seconds": 60,
        **({"tenants": tenants} if tenants != 40 else {}),
        "warmup_seconds": WARMUP_S,
        "incidents": [_label(i) for i in incidents],
        "bursts": [{"app": a, "environment": "production", "factor": 2.0,
                    "start": rfc3339(round(b0 * 1000) / 1000),
                    "end": rfc3339(round(b1 * 1000) / 1000)}
                   for b0, b1, a in bursts],
    }
    labels_path.write_bytes(orjson.dumps(labels, option=_SORT | orjson.OPT_INDENT_2) + b"\n")
    return {"events": writer.events, "lines": writer.lines, "malformed_lines": writer.malformed,
            "incidents": len(incidents), "traces": str(traces), "labels": str(labels_path),
            "start": labels["start"], "end": labels["end"]}


def _otlp_file(native: Path, fmt: str) -> str:
    from detector.lab.genai_spans import write_otlp

    out = native.with_name("traces.otlp.jsonl" if fmt == "otlp_json" else "traces.otlp.pb")
    with native.open("rb") as src, out.open("wb") as dst:
        write_otlp(src, dst, fmt)
    return str(out)


def _parse_start(text: str) -> datetime:
    ts = datetime.fromisoformat(text)
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError("start needs an offset, e.g. 2026-01-05T00:00:00Z")
    return ts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--hours", type=float, default=4.0, help="event time to cover")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, "none"],
                        help="incident scenario to inject (repeatable; default all but the "
                             "issue-12 shapes; 'none' for clean traffic)")
    parser.add_argument("--tenants", type=int, default=40,
                        help="tenants in the world (more for many small cohorts)")
    parser.add_argument("--rate", type=float, default=40.0, help="mean events per second")
    parser.add_argument("--format", choices=["native", "otlp_proto", "otlp_json"],
                        default="native", help="also write the events as OpenTelemetry GenAI "
                        "spans through the OTLP encoder (traces.otlp.jsonl or traces.otlp.pb; "
                        "malformed lines left out); replay them with the same --format")
    parser.add_argument("--start", type=_parse_start, default=DEFAULT_START,
                        help="RFC 3339 start of event time (default 2026-01-05T00:00:00Z)")


def run(args: argparse.Namespace) -> int:
    names: list[str] | None = args.scenario
    if names is not None and "none" in names:
        if len(set(names)) > 1:
            print("simulate: 'none' cannot be combined with other scenarios", file=sys.stderr)
            return 2
        names = []
    began = time.perf_counter()
    try:
        s = simulate(args.out, hours=args.hours, seed=args.seed, scenarios=names,
                     rate=args.rate, start=args.start, tenants=args.tenants)
        if args.format != "native":
            s["traces"] = _otlp_file(Path(s["traces"]), args.format)
    except (ValueError, OSError) as e:
        print(f"simulate: {e}", file=sys.stderr)
        return 2
    except ImportError as e:   # the encoder's packages are the test extra's
        print(f"simulate: --format {args.format} needs opentelemetry-sdk and "
              f"opentelemetry-exporter-otlp-proto-common (pip install '.[test]'): {e}",
              file=sys.stderr)
        return 2
    print(f"simulate: {s['events']} events, {s['malformed_lines']} malformed lines, "
          f"{s['incidents']} incidents, {s['start']} .. {s['end']} -> {s['traces']}, "
          f"{s['labels']} ({time.perf_counter() - began:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m detector.lab.simulate", description=__doc__)
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
