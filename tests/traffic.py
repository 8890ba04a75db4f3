"""Deterministic synthetic traffic for unit tests: small, explicit, seeded.

``stream(minutes, ...)`` yields encoded events minute by minute; ``effect(minute)`` may change
the per-event probabilities for chosen minutes, so a test states its incident in one line.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import orjson

T0 = 1_767_571_200.0  # 2026-01-05T00:00:00Z, a Monday


def trace_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def stream(
    minutes: int,
    *,
    per_minute: int = 200,
    cohorts: tuple[dict[str, str], ...] = ({"tenant": "acme", "app": "agent"},),
    refusal: float = 0.05,
    effect: Callable[[int, dict[str, str]], dict[str, Any]] | None = None,
    seed: int = 1,
    start: float = T0,
    versions: Callable[[int, dict[str, str]], dict[str, str]] | None = None,
) -> Iterator[bytes]:
    """Chats (with refusals and output tokens) and tool calls, spread evenly over each minute.

    ``effect(minute, cohort)`` returns overrides: ``refusal`` (probability), ``per_minute``,
    ``tool_calls`` (per chat), ``output_tokens`` (mean), ``unauthorized`` (count)."""
    rng = random.Random(seed)
    for m in range(minutes):
        for cohort in cohorts:
            fx = effect(m, cohort) if effect else {}
            n = int(fx.get("per_minute", per_minute))
            p = fx.get("refusal", refusal)
            tools = fx.get("tool_calls", 0.5)
            tokens = fx.get("output_tokens", 200.0)
            ver = versions(m, cohort) if versions else {"prompt_version": "v1"}
            for i in range(n):
                ts = start + m * 60 + (i + 0.5) * 60 / n
                tid = trace_id(rng)
                base = {"ts": ts, "trace_id": tid, **cohort, "model_version": "m1",
                        "policy_version": "p1", **ver}
                yield orjson.dumps({**base, "operation": "chat",
                                    "refusal": rng.random() < p,
                                    "output_tokens": max(1, int(rng.gauss(tokens, tokens / 5))),
                                    "latency_ms": 400 + rng.random() * 100})
                if rng.random() < tools:
                    yield orjson.dumps({**base, "operation": "execute_tool", "tool_name": "search",
                                        "tool_authorized": True, "schema_valid": True})
            for _ in range(int(fx.get("unauthorized", 0))):
                yield orjson.dumps({"ts": start + m * 60 + 30, "trace_id": trace_id(rng),
                                    **cohort, "operation": "execute_tool",
                                    "tool_name": "send_email", "tool_authorized": False})


def chats(t0: float, minutes: int, refusing: range = range(0), *,
          trace_ids: bool = False) -> list[bytes]:
    """100 chats a minute for tenant t1 of support-agent; 60 % refusals in the minutes listed
    in ``refusing`` (2 % otherwise). The warm-up and incident of the failover and reload
    tests."""
    out = []
    for i in range(minutes * 100):
        refused = (i % 100) < (60 if i // 100 in refusing else 2)
        ev: dict[str, Any] = {"ts": t0 + i * 0.6, "operation": "chat", "tenant": "t1",
                              "app": "support-agent", "refusal": refused}
        if trace_ids:
            ev["trace_id"] = f"{i:032x}"
        out.append(orjson.dumps(ev))
    return out
