"""Issue 12's detection targets, through the Pipeline at the default config.

Traffic of exactly the stated shape: one finest cohort in production, 60 s windows, six hours
of clean windows at the base rate, then the rise. The number of relevant events in a window is
Poisson, each one flagged with the rate's probability (binomial). A delay on such traffic is
a random variable (the optimal bound itself is an expectation, ln(run length) / KL), so each
case runs on nine seeds: the median delay must meet the target, and at most one seed may go
unpaged through the 30 windows of the rise (a miss counts as later than the rise).

| relevant events / window | base rate | rise | first alert within | sev2 within |
| 7   | 0.1 % | x100 | 10 windows | 15 windows |
| 5   | 1 %   | x40  | 4 windows  | 8 windows  |
| 100 | 1 %   | x3   | 15 windows | 20 windows |

The null test runs the same shapes clean and counts every alert (any signal, any severity).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from statistics import median
from typing import Any, Final, NamedTuple

import numpy as np
import orjson
import pytest

from detector.config import Config
from detector.core.alert import alert_record
from detector.core.pipeline import Pipeline
from tests.traffic import T0

WINDOW: Final = 60
WARMUP_WINDOWS: Final = 360          # six hours at the base rate
RISE_WINDOWS: Final = 30
SEEDS: Final = tuple(range(1, 10))


class Shape(NamedTuple):
    """One target row: ``n`` relevant events a window, flagged at ``base`` then ``base * rise``."""

    signal: str
    n: float
    base: float
    rise: float
    first_within: int
    sev2_within: int


TARGETS: Final = (
    Shape("safety_prompt_injection", 7, 0.001, 100, 10, 15),
    Shape("instruction_violation_rate", 5, 0.01, 40, 4, 8),
    Shape("fabricated_tool_result_rate", 100, 0.01, 3, 15, 20),
)


def _event(shape: Shape, cohort: dict[str, str], ts: float, flag: bool, tid: str
           ) -> dict[str, Any]:
    """One relevant event for ``shape.signal``: a chat (per event / per model call) or a tool
    call (per tool call), flagged or not."""
    ev: dict[str, Any] = {"ts": ts, "trace_id": tid, **cohort}
    if shape.signal == "safety_prompt_injection":
        return ev | {"operation": "chat", "safety_hits": ["prompt_injection"] if flag else []}
    if shape.signal == "instruction_violation_rate":
        return ev | {"operation": "chat", "instruction_violation": flag}
    return ev | {"operation": "execute_tool", "tool_name": "search", "tool_authorized": True,
                 "tool_result_fabricated": flag}


def windows(shapes: list[tuple[Shape, dict[str, str]]], count: int, seed: int,
            rise_from: int | None = None) -> Iterator[list[bytes]]:
    """Each window's messages (one JSON array per cohort) for ``count`` windows. Events sit
    30-50 s into their window, so the next window's first event closes it whatever the order
    within a window."""
    rng = np.random.default_rng(seed)
    serial = 0
    for w in range(count):
        msgs = []
        for shape, cohort in shapes:
            p = shape.base * (shape.rise if rise_from is not None and w >= rise_from else 1.0)
            k = int(rng.poisson(shape.n))
            flags = rng.random(k) < p
            start = T0 + w * WINDOW + 30
            evs = []
            for i in range(k):
                serial += 1
                evs.append(_event(shape, cohort, start + 20.0 * i / max(k, 1), bool(flags[i]),
                                  f"{serial:032x}"))
            if evs:
                msgs.append(orjson.dumps(evs))
        yield msgs


def run(config: Config, batches: Iterator[list[bytes]]) -> list[dict[str, Any]]:
    pipe = Pipeline(config)
    alerts: list[dict[str, Any]] = []
    for msgs in batches:
        alerts += map(alert_record, pipe.feed_many(msgs))
    assert pipe.rejects == []
    return alerts + [alert_record(a) for a in pipe.finish()]


def _elapsed(alert: dict[str, Any], rise_from: int) -> int:
    """Windows from the start of the rise to the end of the alert's window, inclusive."""
    end = datetime.fromisoformat(alert["window"]["end"]).timestamp()
    return round((end - T0) / WINDOW) - rise_from


COHORT: Final = {"tenant": "t1", "app": "a", "environment": "production"}


def delays(config: Config, shape: Shape, seed: int) -> tuple[int | None, int | None]:
    """(windows to the first alert on the signal, windows to its first sev2) on one seed;
    None when it never came within the rise."""
    alerts = run(config, windows([(shape, COHORT)], WARMUP_WINDOWS + RISE_WINDOWS, seed,
                                 rise_from=WARMUP_WINDOWS))
    mine = [a for a in alerts if a["signal"] == shape.signal and a["status"] == "firing"
            and a.get("window")]
    early = [a for a in mine if _elapsed(a, WARMUP_WINDOWS) <= 0]
    assert early == [], "an alert before the rise: the base rate alone set it off"
    first = min((_elapsed(a, WARMUP_WINDOWS) for a in mine), default=None)
    sev2 = min((_elapsed(a, WARMUP_WINDOWS) for a in mine if a["severity"] in ("sev1", "sev2")),
               default=None)
    return first, sev2


@pytest.mark.parametrize("shape", TARGETS, ids=lambda s: f"{s.n:g}ev-{s.base:g}-x{s.rise:g}")
def test_a_rise_of_the_stated_shape_is_seen_and_paged_in_time(config: Config,
                                                              shape: Shape) -> None:
    got = {seed: delays(config, shape, seed) for seed in SEEDS}
    missed = {seed: d for seed, d in got.items() if d[0] is None or d[1] is None}
    assert len(missed) <= 1, f"(first alert, sev2) windows per seed: {got}"
    big = RISE_WINDOWS + 1   # a miss counts as later than the rise
    assert median(d[0] or big for d in got.values()) <= shape.first_within, got
    assert median(d[1] or big for d in got.values()) <= shape.sev2_within, got


# The budget: about one sev4 a day per ~4,000 (cohort, signal) pairs, a run length of
# ~6 M windows per pair. What CI can afford to simulate (~0.4 ms a cohort-window in stage 2)
# is ~100k windows of the tested pairs: none may alert there, on any signal.
NULL_COHORTS: Final = ((TARGETS[0], 45), (TARGETS[1], 45), (TARGETS[2], 10))
NULL_WINDOWS: Final = 1000
NULL_MAX_ALERTS: Final = 0


def test_clean_traffic_of_these_shapes_raises_nothing(config: Config) -> None:
    shapes = [(shape, {"tenant": f"n{shape.signal[:4]}{i:03d}", "app": "a",
                       "environment": "production"})
              for shape, count in NULL_COHORTS for i in range(count)]
    alerts = run(config, windows(shapes, NULL_WINDOWS, seed=99))
    pair_windows = len(shapes) * (NULL_WINDOWS - config.baselines.warmup_windows)
    assert pair_windows >= 98_000
    firing = {(a["signal"], tuple(sorted(a["cohort"].items())), a["severity"])
              for a in alerts if a["status"] == "firing"}
    assert len({a["id"] for a in alerts}) <= NULL_MAX_ALERTS, sorted(firing)[:20]
