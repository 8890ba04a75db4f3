"""Signal definitions: what stage 1 counts from each event, and what each signal measures
from a window's totals. Declared once, here: :data:`COUNTERS` (what is counted from which
event field; the Python counting and the C table of :mod:`detector.core.counting` are made
from it) and :data:`SIGNALS` (which counters a signal reads).

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
from enum import Enum
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from detector.core.events import MODEL_OPERATIONS
from detector.core.partials import SCALE, Partial

if TYPE_CHECKING:
    from detector.config import Config, Price

__all__ = ["ADDED", "ADDED_WIDTH", "COUNTERS", "EVAL_SCALE", "FIXED_AT", "HARD_RULE_SIGNALS",
           "INDICATOR_SIGNALS", "MAX_RETRIES", "SET", "SIGNALS", "TOOL_COUNTERS", "Counter",
           "Layout", "Signal", "SignalSpec", "check", "expand", "known_signals", "layout_of",
           "matches"]

Kind = Literal["rate", "quantity", "volume"]
#: How a counter is counted: ``count`` +1 per event that passes ``when``; ``sum`` adds an int
#: field (at most ``cap``); ``log1p`` counts a quantity as n, sum and sum of squares of
#: fixed-point log1p; the group rules, whose counters depend on the config: ``labels`` one
#: counter per configured safety label and ``other``; ``cost`` a model call's tokens at its
#: model's price, like ``log1p``; ``scores`` n, sum and sum of squares per configured evaluator.
Rule = Literal["count", "sum", "log1p", "labels", "cost", "scores"]
#: The trace ids kept as a counter's evidence: ``ids`` of the events it counted (bottom-k),
#: ``sampled`` the 1 in 16 whose id starts with "0", ``top`` of the largest values,
#: ``lowest`` of the lowest.
Evidence = Literal["", "ids", "sampled", "top", "lowest"]


class Present(Enum):
    """A ``when`` test other than "is this bool" and "equals this string"."""

    SET = "set"   # the field is present


SET: Final = Present.SET
GROUP_RULES: Final = frozenset({"labels", "cost", "scores"})
#: The evidence each rule can keep (a group's is fixed by its rule).
EVIDENCE_OF: Final[dict[str, tuple[str, ...]]] = {
    "count": ("", "ids", "sampled"), "sum": ("", "ids"), "log1p": ("", "top"),
    "labels": ("ids",), "cost": ("top",), "scores": ("lowest",)}
#: An event's retries count at most this much: the contract sets no ceiling, and one huge value
#: must not overflow the float arithmetic of stage 2's rates.
MAX_RETRIES: Final = 1 << 20


class Counter(NamedTuple):
    """A counter a partial holds (a group of them for ``log1p`` and the group rules), and what
    stage 1 counts into it from which event field: the one declaration the Python counting
    and the C table (:mod:`detector.core.counting`) are derived from."""

    name: str
    rule: Rule = "count"
    #: The field read: a ``sum``'s or a quantity's value, a group's labels or scores.
    field: str = ""
    #: The operations it counts on; () for any.
    on: tuple[str, ...] = ()
    #: (field, test) pairs: the event counts if any holds; () for every event.
    when: tuple[tuple[str, bool | str | Present], ...] = ()
    evidence: Evidence = ""
    cap: int = 0


MODEL_CALL: Final = tuple(sorted(MODEL_OPERATIONS))
_TOP: Final[Evidence] = "top"
_IDS: Final[Evidence] = "ids"

#: Every counter, in the order partials hold them (the wire and snapshot format): the fixed
#: ones, then the groups, whose size depends on the config.
COUNTERS: Final[tuple[Counter, ...]] = (
    Counter("events", evidence="sampled"),
    Counter("model_calls", on=MODEL_CALL),
    Counter("tool_calls", on=("execute_tool",)),
    Counter("refusals", on=MODEL_CALL, when=(("refusal", True),), evidence=_IDS),
    Counter("instruction_violations", on=MODEL_CALL, when=(("instruction_violation", True),),
            evidence=_IDS),
    Counter("format_checked", on=MODEL_CALL, when=(("output_format_valid", SET),)),
    Counter("format_failures", on=MODEL_CALL, when=(("output_format_valid", False),),
            evidence=_IDS),
    Counter("schema_invalid", on=("execute_tool",), when=(("schema_valid", False),),
            evidence=_IDS),
    Counter("fabricated_results", on=("execute_tool",),
            when=(("tool_result_fabricated", True),), evidence=_IDS),
    Counter("human_overrides", on=("human_override",), evidence=_IDS),
    Counter("memory_writes", on=("memory_write",), evidence=_IDS),
    Counter("retries", "sum", "retries", evidence=_IDS, cap=MAX_RETRIES),
    Counter("errors", when=(("error_type", SET), ("finish_reason", "error"),
                            ("tool_status", "error")), evidence=_IDS),
    Counter("in_tok", "log1p", "input_tokens", on=MODEL_CALL),
    Counter("out_tok", "log1p", "output_tokens", on=MODEL_CALL, evidence=_TOP),
    Counter("lat", "log1p", "latency_ms", on=MODEL_CALL, evidence=_TOP),
    # Leading indicators (optional fields): hand-offs to a human, and the output's entropy as
    # the producer measured it (log1p like any quantity: non-negative, no new rule in C).
    Counter("escalations", when=(("escalated", True),), evidence=_IDS),
    Counter("escalation_reported", when=(("escalated", SET),)),
    Counter("entropy", "log1p", "output_entropy", on=MODEL_CALL, evidence=_TOP),
    Counter("safety", "labels", "safety_hits", evidence=_IDS),
    Counter("cost", "cost", on=MODEL_CALL, evidence=_TOP),
    Counter("eval", "scores", "eval_scores", evidence="lowest"),
)


_NSQ: Final = ("n", "sum", "sq")


def check(counters: tuple[Counter, ...]) -> tuple[Counter, ...]:
    """``counters``, if each is one the counting knows how to count; else ValueError.

    >>> check((Counter("late_chats", "sum", "latency_ms", evidence="top"),))
    Traceback (most recent call last):
    ValueError: counter late_chats: a sum keeps no evidence 'top'
    """
    for c in counters:
        if c.evidence not in EVIDENCE_OF[c.rule]:
            raise ValueError(f"counter {c.name}: a {c.rule} keeps no evidence {c.evidence!r}")
        if (c.rule in ("count", "cost")) == bool(c.field) or (c.when and c.rule != "count"):
            raise ValueError(f"counter {c.name}: a {c.rule} reads "
                             f"{'a field' if c.rule not in ('count', 'cost') else 'when'}")
    if any(sum(c.rule == g for c in counters) > 1 for g in GROUP_RULES):
        raise ValueError("one counter group of each kind: labels, cost, scores")
    return counters


def expand(counters: tuple[Counter, ...], labels: tuple[str, ...], evaluators: tuple[str, ...]
           ) -> tuple[list[str], dict[str, int], dict[str, tuple[str, ...]]]:
    """The counters' names for these labels and evaluators (the fixed counters first, then
    the groups), each counter's first index, and the labels or evaluators of each group.

    >>> names, at, members = expand(COUNTERS, ("pii", "other"), ("faithfulness",))
    >>> names[at["lat"]:at["lat"] + 3], names[at["safety"]:at["cost"]], members["eval"]
    (['lat_n', 'lat_sum', 'lat_sq'], ['safety_pii', 'safety_other'], ('faithfulness',))
    """
    names: list[str] = []
    at: dict[str, int] = {}
    members: dict[str, tuple[str, ...]] = {}
    for c in sorted(counters, key=lambda c: c.rule in GROUP_RULES):   # stable: table order
        at[c.name] = len(names)
        if c.rule == "labels":
            members[c.name] = labels
            names += (f"{c.name}_{x}" for x in labels)
        elif c.rule == "scores":
            members[c.name] = evaluators
            names += (f"{c.name}_{e}_{q}" for e in evaluators for q in _NSQ)
        else:
            names += (f"{c.name}_{q}" for q in _NSQ) if c.rule in ("log1p", "cost") else [c.name]
    return names, at, members


#: The first index of each fixed counter (and group, with no labels and no evaluators).
FIXED_AT: Final = expand(check(COUNTERS), (), ())[1]
# Indexes other modules and tests read partials by.
EVENTS, MODEL, REFUSAL = FIXED_AT["events"], FIXED_AT["model_calls"], FIXED_AT["refusals"]
RETRIES, IN_N, OUT_N = FIXED_AT["retries"], FIXED_AT["in_tok"], FIXED_AT["out_tok"]
IN_S = IN_N + 1

#: The fixed counters added after partials first crossed the wire (the leading indicators'),
#: and how many counters they take: :meth:`Layout.fit` makes room for them in an older one.
ADDED: Final = ("escalations", "escalation_reported", "entropy")
ADDED_WIDTH: Final = 5

HARD_RULE_SIGNALS: Final = ("unauthorized_tool_call", "unapproved_side_effect")
#: Leading indicators stage 2 works out across windows or cohorts (core/indicators.py).
INDICATOR_SIGNALS: Final = ("canary_gap", "prompt_churn")
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


class SignalSpec(NamedTuple):
    """A signal as declared: its counters by name (a ``rate``'s numerator and denominator, a
    quantity's counter). On a group of counters, ``{}`` in the name and description stands
    for each configured label or evaluator."""

    name: str
    kind: Kind
    num: str
    den: str = ""
    description: str = ""
    flags: bool = False
    log: bool = True


def _rate(name: str, num: str, den: str, description: str, flags: bool = True) -> SignalSpec:
    return SignalSpec(name, "rate", num, den, description, flags)


#: Every windowed signal, in the order scoring takes them.
SIGNALS: Final[tuple[SignalSpec, ...]] = (
    _rate("refusal_rate", "refusals", "model_calls", "refusals per model call"),
    _rate("tool_calls_per_chat", "tool_calls", "model_calls", "tool calls per model call",
          flags=False),
    _rate("schema_invalid_rate", "schema_invalid", "tool_calls",
          "tool calls whose arguments broke the schema"),
    _rate("fabricated_tool_result_rate", "fabricated_results", "tool_calls",
          "tool results the model made up"),
    _rate("instruction_violation_rate", "instruction_violations", "model_calls",
          "outputs that broke a system instruction"),
    _rate("output_format_failure_rate", "format_failures", "format_checked",
          "outputs that did not parse as asked"),
    _rate("human_override_rate", "human_overrides", "model_calls",
          "human overrides per model call"),
    _rate("memory_write_rate", "memory_writes", "model_calls", "memory writes per model call",
          flags=False),
    _rate("retry_rate", "retries", "events", "caller retries per event", flags=False),
    _rate("error_rate", "errors", "events", "failed operations per event"),
    _rate("safety_{}", "safety", "events", "{} safety hits per event"),
    SignalSpec("input_tokens", "quantity", "in_tok",
               description="mean input tokens per model call"),
    SignalSpec("output_tokens", "quantity", "out_tok",
               description="mean output tokens per model call"),
    SignalSpec("latency_ms", "quantity", "lat", description="mean model-call latency (ms)"),
    SignalSpec("cost", "quantity", "cost", description="spend per model call (price table "
               "units per million tokens, × 1e-6)"),
    SignalSpec("eval_{}", "quantity", "eval", description="mean {} evaluation score", log=False),
    # Per event that reports the field: a cohort that never does has no such signal to score
    # or learn, and costs nothing.
    _rate("escalation_rate", "escalations", "escalation_reported",
          "hand-offs to a human per event that reports them"),
    SignalSpec("output_entropy", "quantity", "entropy",
               description="the outputs' entropy as producers report it (geometric mean of "
               "1 + entropy, less 1)"),
    SignalSpec("volume", "volume", "events", "events", "events per window"),
)

#: The counters kept per tool name (Partial.values, for attribution): events and those of the
#: rates counted per tool call, all counted per event (fixed), so C sums them as it counts.
TOOL_COUNTERS: Final = tuple(sorted({FIXED_AT["events"]} | {
    FIXED_AT[n] for s in SIGNALS if s.kind == "rate" and s.den == "tool_calls"
    for n in (s.num, s.den)}))


class Layout:
    """The counter layout for the configured safety labels and evaluators, and the prices
    that turn a model call's tokens into its cost: :data:`COUNTERS` and :data:`SIGNALS`
    expanded for a config.

    Counters: the fixed ones, one per safety label and ``other``, the cost's n, sum and sum
    of squares, then those three per evaluator: an input value never adds a counter."""

    __slots__ = ("at", "cost_at", "default_price", "eval_at", "evaluators", "names", "prices",
                 "safety_index", "signals", "size")

    def __init__(self, safety_labels: tuple[str, ...], evaluators: tuple[str, ...] = (),
                 prices: Mapping[str, Price] | None = None, default: Price | None = None
                 ) -> None:
        labels = (*safety_labels, "other")
        names, at, members = expand(COUNTERS, labels, evaluators)
        #: counter (or group) name -> its first counter's index
        self.at: dict[str, int] = at
        self.names: tuple[str, ...] = tuple(names)
        self.size = len(self.names)
        group = {c.rule: self.at[c.name] for c in COUNTERS if c.rule in GROUP_RULES}
        #: label -> counter index; labels not configured count under ``other``.
        self.safety_index: dict[str, int] = {x: group["labels"] + i for i, x in enumerate(labels)}
        self.cost_at, self.eval_at = group["cost"], group["scores"]
        self.evaluators = evaluators
        #: model -> (input, output) price per million tokens, i.e. micro-units per token; a
        #: model not listed has the default price, and a price of (0, 0) means "no cost".
        self.prices: dict[str, tuple[float, float]] = {
            m: (p.input_per_million, p.output_per_million) for m, p in (prices or {}).items()}
        d = (default.input_per_million, default.output_per_million) if default else (0.0, 0.0)
        self.default_price: tuple[float, float] | None = d if d != (0.0, 0.0) else None
        self.signals: tuple[Signal, ...] = tuple(
            s for spec in SIGNALS for s in self._expand(spec, members.get(spec.num)))

    def fit(self, p: Partial) -> None:
        """A partial from an older worker or state, in this layout: one written before
        :data:`ADDED` lacks those counters (their place is before the groups, which a
        config can size, so the C counting's indexes stay fixed) and gets zeros there, its
        group counters and their evidence moved up; one from a layout with fewer evaluators
        (groups of three) is widened at the end, as merging does. The missing widths tell
        the two apart: the added counters' width is not a multiple of three."""
        c = p.counts
        short = self.size - len(c)
        if short <= 0 or short % 3 != ADDED_WIDTH % 3:
            return
        at = FIXED_AT[ADDED[0]]
        c[at:at] = [0] * ADDED_WIDTH
        for held in (p.samples, p.top):
            if any(i >= at for i in held):
                moved = {i + ADDED_WIDTH if i >= at else i: v for i, v in held.items()}
                held.clear()
                held.update(moved)  # type: ignore[arg-type]

    def _expand(self, spec: SignalSpec, members: tuple[str, ...] | None) -> list[Signal]:
        """A declared signal's Signal, or one per member of the group of counters it reads."""
        q = spec.kind == "quantity"
        out = []
        for i, x in enumerate(("",) if members is None else members):
            num = self.at[spec.num] + (3 if q else 1) * i
            out.append(Signal(spec.name.format(x), spec.kind, num,
                              self.at[spec.den] if spec.den else num + 1, num + 2 if q else -1,
                              spec.description.format(x), spec.flags, spec.log))
        return out


def known_signals(safety_labels: list[str], leak_labels: list[str],
                  evaluators: list[str] = ()) -> frozenset[str]:  # type: ignore[assignment]
    """Every signal name a config may set: windowed signals and hard rules."""
    windowed = {s.name for s in Layout(tuple(safety_labels), tuple(evaluators)).signals}
    return frozenset(windowed | set(HARD_RULE_SIGNALS) | set(INDICATOR_SIGNALS) | set(leak_labels))


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
