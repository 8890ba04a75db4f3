"""Signal definitions: what each signal measures from a window's totals.

A window partial holds a flat list of counters (see :class:`Layout`). Each signal reads a
few of them:

- ``rate``: events with a flag per unit of a denominator (refusals per model call, tool calls
  per chat). Tested as counts, so 3 of 10 and 300 of 1000 are different evidence.
- ``quantity``: the mean of a per-event value (tokens, latency), with n, sum and sum of squares.
- ``volume``: events per window, with a daily cycle.

Quantities are counted as log1p (tokens, latency and cost are heavy-tailed), except
evaluation scores, which are counted as they are (``log=False``): a score can be negative,
and its mean is what users read.

>>> lay = Layout(("pii",), ("faithfulness",))
>>> sig = {s.name: s for s in lay.signals}
>>> sig["refusal_rate"].kind, lay.names[sig["refusal_rate"].num], lay.names[sig["refusal_rate"].den]
('rate', 'refusals', 'model_calls')
>>> "safety_pii" in sig and "safety_other" in sig
True
>>> [(n, sig[n].kind, sig[n].log, lay.names[sig[n].num]) for n in ("cost", "eval_faithfulness")]
[('cost', 'quantity', True, 'cost_n'), ('eval_faithfulness', 'quantity', False, \
'eval_faithfulness_n')]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from detector.core.partials import SCALE

if TYPE_CHECKING:
    from detector.config import Config, Price

__all__ = ["EVAL_SCALE", "HARD_RULE_SIGNALS", "Layout", "Signal", "known_signals", "layout_of",
           "matches"]

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
#: Evaluation scores are summed as round(score × EVAL_SCALE) (integers: order-free sums); the
#: same scale as the log1p quantities', so scoring divides every quantity alike.
EVAL_SCALE: Final = SCALE


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
    #: A quantity counted as fixed-point log1p (reported as a geometric mean); else as
    #: round(value × EVAL_SCALE), reported as a mean.
    log: bool = True


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
    """The counter layout for the configured safety labels and evaluators, and the prices
    that turn a model call's tokens into its cost.

    Counters: the fixed ones, one per safety label and ``other``, the cost's n, sum and sum
    of squares, then those three per evaluator: an input value never adds a counter."""

    __slots__ = ("cost_at", "default_price", "eval_at", "evaluators", "names", "prices",
                 "safety_index", "signals", "size")

    def __init__(self, safety_labels: tuple[str, ...], evaluators: tuple[str, ...] = (),
                 prices: Mapping[str, Price] | None = None, default: Price | None = None
                 ) -> None:
        labels = (*safety_labels, "other")
        self.names: tuple[str, ...] = (
            *BASE_COUNTERS, *(f"safety_{x}" for x in labels), "cost_n", "cost_sum", "cost_sq",
            *(f"eval_{e}_{c}" for e in evaluators for c in ("n", "sum", "sq")))
        self.size = len(self.names)
        #: label -> counter index; labels not configured count under ``other``.
        self.safety_index: dict[str, int] = {
            x: len(BASE_COUNTERS) + i for i, x in enumerate(labels)
        }
        self.cost_at = len(BASE_COUNTERS) + len(labels)
        self.eval_at = self.cost_at + 3
        self.evaluators = evaluators
        #: model -> (input, output) price per million tokens, i.e. micro-units per token; a
        #: model not listed has the default price, and a price of (0, 0) means "no cost".
        self.prices: dict[str, tuple[float, float]] = {
            m: (p.input_per_million, p.output_per_million) for m, p in (prices or {}).items()}
        d = (default.input_per_million, default.output_per_million) if default else (0.0, 0.0)
        self.default_price: tuple[float, float] | None = d if d != (0.0, 0.0) else None
        sigs = [Signal(n, "rate", a, b, description=d, flags=n not in _CLUSTERED)
                for n, a, b, d in _RATES]
        sigs += [
            Signal(f"safety_{x}", "rate", i, EVENTS, description=f"{x} safety hits per event",
                   flags=True)
            for x, i in self.safety_index.items()
        ]
        sigs += [Signal(n, "quantity", a, b, c, d) for n, a, b, c, d in _QUANTITIES]
        c = self.cost_at
        sigs.append(Signal("cost", "quantity", c, c + 1, c + 2,
                           "spend per model call (price table units per million tokens, "
                           "× 1e-6)"))
        sigs += [Signal(f"eval_{e}", "quantity", i, i + 1, i + 2, f"mean {e} evaluation score",
                        log=False)
                 for e, i in zip(evaluators, range(self.eval_at, self.size, 3), strict=True)]
        sigs.append(Signal("volume", "volume", EVENTS, EVENTS, description="events per window"))
        self.signals: tuple[Signal, ...] = tuple(sigs)


def known_signals(safety_labels: list[str], leak_labels: list[str],
                  evaluators: list[str] = ()) -> frozenset[str]:  # type: ignore[assignment]
    """Every signal name a config may set: windowed signals and hard rules."""
    windowed = {s.name for s in Layout(tuple(safety_labels), tuple(evaluators)).signals}
    return frozenset(windowed | set(HARD_RULE_SIGNALS) | set(leak_labels))


def layout_of(config: Config) -> Layout:
    """The layout of a config's safety labels, evaluators and prices."""
    i, sp = config.input, config.spend
    return Layout(tuple(i.safety_labels), tuple(i.evaluators), sp.prices, sp.default)


def matches(signal: str, patterns: list[str]) -> bool:
    """``*`` matches all; ``safety_*`` matches by prefix.

    >>> matches("safety_pii", ["safety_*"]), matches("volume", ["refusal_rate"])
    (True, False)
    """
    return any(
        p == "*" or p == signal or (p.endswith("*") and signal.startswith(p[:-1]))
        for p in patterns
    )
