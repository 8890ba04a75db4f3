"""Signal definitions: what each signal measures from a window's totals.

A window partial holds a flat list of counters (see :class:`Layout`). Each signal reads a
few of them:

- ``rate``: events with a flag per unit of a denominator (refusals per model call, tool calls
  per chat). Tested as counts, so 3 of 10 and 300 of 1000 are different evidence.
- ``quantity``: the mean of a per-event value (tokens, latency), with n, sum and sum of squares.
- ``volume``: events per window, with a daily cycle.

>>> lay = Layout(("pii",))
>>> sig = {s.name: s for s in lay.signals}
>>> sig["refusal_rate"].kind, lay.names[sig["refusal_rate"].num], lay.names[sig["refusal_rate"].den]
('rate', 'refusals', 'model_calls')
>>> "safety_pii" in sig and "safety_other" in sig
True
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

__all__ = ["HARD_RULE_SIGNALS", "Layout", "Signal", "known_signals", "matches"]

Kind = Literal["rate", "quantity", "volume"]

# Fixed counters, in order. Safety-label counters follow them (one per configured label
# plus ``other``), so an input value never adds a counter.
BASE_COUNTERS: Final = (
    "events", "model_calls", "tool_calls", "refusals", "instruction_violations",
    "format_checked", "format_failures", "schema_invalid", "fabricated_results",
    "human_overrides", "memory_writes", "retries", "errors",
    "in_tok_n", "in_tok_sum", "in_tok_sq", "out_tok_n", "out_tok_sum", "out_tok_sq",
    "lat_n", "lat_sum", "lat_sq",
)
(EVENTS, MODEL, TOOL, REFUSAL, INSTR, FMT_N, FMT_FAIL, SCHEMA_INV, FABRICATED, OVERRIDE,
 MEMWRITE, RETRIES, ERRORS, IN_N, IN_S, IN_Q, OUT_N, OUT_S, OUT_Q,
 LAT_N, LAT_S, LAT_Q) = range(len(BASE_COUNTERS))

HARD_RULE_SIGNALS: Final = ("unauthorized_tool_call", "unapproved_side_effect")


class Signal(NamedTuple):
    """One signal; ``num``/``den`` index the counters (for quantities: n, sum, sum of squares)."""

    name: str
    kind: Kind
    num: int
    den: int
    sq: int = -1
    description: str = ""
    #: A rate whose numerator counts flagged units, at most one each (refusals per model
    #: call): Poisson counts. Not so for sums (retries) and counts per unit (tool calls per
    #: chat), which come in clusters.
    flags: bool = False


_RATES: Final = (
    ("refusal_rate", REFUSAL, MODEL, "refusals per model call"),
    ("tool_calls_per_chat", TOOL, MODEL, "tool calls per model call"),
    ("schema_invalid_rate", SCHEMA_INV, TOOL, "tool calls whose arguments broke the schema"),
    ("fabricated_tool_result_rate", FABRICATED, TOOL, "tool results the model made up"),
    ("instruction_violation_rate", INSTR, MODEL, "outputs that broke a system instruction"),
    ("output_format_failure_rate", FMT_FAIL, FMT_N, "outputs that did not parse as asked"),
    ("human_override_rate", OVERRIDE, MODEL, "human overrides per model call"),
    ("memory_write_rate", MEMWRITE, MODEL, "memory writes per model call"),
    ("retry_rate", RETRIES, EVENTS, "caller retries per event"),
    ("error_rate", ERRORS, EVENTS, "failed operations per event"),
)
_CLUSTERED: Final = frozenset({"tool_calls_per_chat", "memory_write_rate", "retry_rate"})
_QUANTITIES: Final = (
    ("input_tokens", IN_N, IN_S, IN_Q, "mean input tokens per model call"),
    ("output_tokens", OUT_N, OUT_S, OUT_Q, "mean output tokens per model call"),
    ("latency_ms", LAT_N, LAT_S, LAT_Q, "mean model-call latency (ms)"),
)


class Layout:
    """The counter layout for a set of configured safety labels."""

    __slots__ = ("names", "safety_index", "signals", "size")

    def __init__(self, safety_labels: tuple[str, ...]) -> None:
        labels = (*safety_labels, "other")
        self.names: tuple[str, ...] = (*BASE_COUNTERS, *(f"safety_{x}" for x in labels))
        self.size = len(self.names)
        #: label -> counter index; labels not configured count under ``other``.
        self.safety_index: dict[str, int] = {
            x: len(BASE_COUNTERS) + i for i, x in enumerate(labels)
        }
        sigs = [Signal(n, "rate", a, b, description=d, flags=n not in _CLUSTERED)
                for n, a, b, d in _RATES]
        sigs += [
            Signal(f"safety_{x}", "rate", i, EVENTS, description=f"{x} safety hits per event",
                   flags=True)
            for x, i in self.safety_index.items()
        ]
        sigs += [Signal(n, "quantity", a, b, c, d) for n, a, b, c, d in _QUANTITIES]
        sigs.append(Signal("volume", "volume", EVENTS, EVENTS, description="events per window"))
        self.signals: tuple[Signal, ...] = tuple(sigs)


def known_signals(safety_labels: list[str], leak_labels: list[str]) -> frozenset[str]:
    """Every signal name a config may set: windowed signals and hard rules."""
    windowed = {s.name for s in Layout(tuple(safety_labels)).signals}
    return frozenset(windowed | set(HARD_RULE_SIGNALS) | set(leak_labels))


def matches(signal: str, patterns: list[str]) -> bool:
    """``*`` matches all; ``safety_*`` matches by prefix.

    >>> matches("safety_pii", ["safety_*"]), matches("volume", ["refusal_rate"])
    (True, False)
    """
    return any(
        p == "*" or p == signal or (p.endswith("*") and signal.startswith(p[:-1]))
        for p in patterns
    )
