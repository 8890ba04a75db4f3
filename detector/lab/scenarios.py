"""The simulated world and its incident scenarios: apps, tenants, cohorts, and the planner
that places labelled incidents on them.

:mod:`detector.lab.simulate` turns a :class:`World` and a plan into trace events. Everything here
is deterministic: the world is fixed (the same tenants and apps for every seed), and the plan
draws only from the ``random.Random`` it is given.

>>> w = World.build()
>>> len(w.tenants), sorted(w.apps)[:2]
(40, ['coding-assistant', 'payments-agent'])
>>> SCENARIOS["refusal_spike"].signals, SCENARIOS["refusal_spike"].expected
(('refusal_rate',), 'sev2')
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = ["APPS", "DEFAULT_SCENARIOS", "SCENARIOS", "WARMUP_S", "AppProfile", "Cohort",
           "PlannedIncident", "Scenario", "World", "cycle_factor", "daily_factor", "overlaps",
           "plan", "signals_config"]

WARMUP_S: Final = 3600.0  # clean traffic before the first incident, for baselines to learn
TAIL_S: Final = 300.0  # room after the last incident so it can be seen to end
SAME_SIGNAL_GAP_S: Final = 900.0
REGIONS: Final = ("us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2")

Cohort = tuple[str | None, str, str]  # (tenant or None for the whole app, app, environment)
Kind = Literal["drift", "hard_rule", "benign"]
Effect = tuple[tuple[str, float, float], ...]  # (attribute, factor, floor)


@dataclass(frozen=True)
class AppProfile:
    """Normal behaviour of one app; probabilities are per model call (tools: per tool call)."""

    name: str
    model: str
    versions: tuple[tuple[str, str], ...]  # (field, value) for model/prompt/policy version
    envs: tuple[tuple[str, float], ...]  # environment -> share of the app's traffic
    in_med: float
    out_med: float
    lat_med: float
    p_refusal: float
    p_textcomp: float
    tools_mean: float  # tool calls per chat
    p_memory: float  # memory writes per chat
    tools: tuple[tuple[str, str], ...]  # (tool_name, side effect)
    json_output: bool = False  # the caller asks for JSON, so output_format_valid is reported
    approvals: bool = False  # write/external tools need a human approval
    always_safety: bool = False  # reports safety_hits (possibly empty) on every model call
    p_pii: float = 0.003
    p_tox: float = 0.002
    p_inj: float = 0.002
    p_jb: float = 0.001
    p_iv: float = 0.01
    p_fmt_fail: float = 0.02
    p_retry: float = 0.04
    p_error: float = 0.01
    p_schema_invalid: float = 0.015
    p_fabricated: float = 0.003
    p_tool_error: float = 0.01
    p_override: float = 0.005
    p_invoke: float = 0.03
    # Online evaluation: (evaluator, mean score in [0, 1]) on this share of answered calls.
    evaluators: tuple[tuple[str, float], ...] = ()
    p_eval: float = 0.0
    eval_mult: float = 1.0  # the first evaluator's scores, times this
    # Leading indicators, reported only where a scenario's background sets them (0: absent):
    # hand-offs to a human per model call, and the outputs' median entropy (nats).
    p_escalate: float = 0.0
    entropy_med: float = 0.0

    def events_per_trace(self) -> float:
        chat = 1.0 - self.p_textcomp
        return 1.0 + chat * (self.tools_mean + self.p_memory + self.p_override + self.p_invoke)


_VERS = ("model_version", "prompt_version", "policy_version")
APPS: Final[dict[str, AppProfile]] = {a.name: a for a in (
    AppProfile("support-agent", "m-large", tuple(zip(_VERS, ("2025-12-01", "v42", "p7"),
               strict=True)), (("production", 0.9), ("canary", 0.1)), 1800, 300, 1400,
               p_refusal=0.05, p_textcomp=0.02, tools_mean=1.5, p_memory=0.05,
               tools=(("search_kb", "read"), ("get_order", "read"), ("lookup_account", "read"),
                      ("create_ticket", "write"), ("send_email", "external")),
               always_safety=True, evaluators=(("faithfulness", 0.86), ("relevance", 0.9)),
               p_eval=0.5),
    AppProfile("coding-assistant", "m-code", tuple(zip(_VERS, ("2025-11-15", "v17", "p3"),
               strict=True)), (("production", 1.0),), 3000, 600, 2500,
               p_refusal=0.02, p_textcomp=0.3, tools_mean=1.5, p_memory=0.05,
               tools=(("read_file", "read"), ("search_code", "read"), ("run_tests", "none"),
                      ("apply_patch", "write"))),
    AppProfile("sales-copilot", "m-medium", tuple(zip(_VERS, ("2025-12-10", "v8", "p2"),
               strict=True)), (("production", 0.97), ("staging", 0.03)), 1200, 250, 900,
               p_refusal=0.025, p_textcomp=0.05, tools_mean=0.5, p_memory=0.0,
               tools=(("crm_lookup", "read"), ("draft_email", "none")), json_output=True,
               p_invoke=0.0, evaluators=(("relevance", 0.88),), p_eval=0.3),
    AppProfile("payments-agent", "m-large", tuple(zip(_VERS, ("2025-12-01", "v5", "p12"),
               strict=True)), (("production", 1.0),), 800, 150, 700,
               p_refusal=0.04, p_textcomp=0.0, tools_mean=1.5, p_memory=0.05,
               tools=(("get_balance", "read"), ("lookup_invoice", "read"),
                      ("issue_refund", "write"), ("transfer_funds", "external")),
               json_output=True, approvals=True, always_safety=True),
)}
AGENT_APPS: Final = ("support-agent", "coding-assistant", "payments-agent")
TOOL_APPS: Final = (*AGENT_APPS, "sales-copilot")

# The biggest tenants' apps are fixed so every app has a high-volume tenant cohort.
_TOP_TENANT_APPS: Final = (
    ("support-agent", "coding-assistant", "sales-copilot"), ("support-agent", "payments-agent"),
    ("coding-assistant", "sales-copilot"), ("support-agent", "payments-agent", "sales-copilot"),
    ("coding-assistant", "support-agent"),
)


@dataclass(frozen=True)
class Scenario:
    """One kind of labelled incident, and how it changes behaviour."""

    name: str
    kind: Kind
    signals: tuple[str, ...]
    expected: str | None
    # attribute -> (factor, floor): during the incident value = max(base * factor, floor)
    effect: Effect = ()
    apps: tuple[str, ...] = tuple(APPS)
    env: str = "production"
    scope: Literal["any", "tenant", "app"] = "any"
    relevant: Literal["model", "chat", "tool", "all"] = "model"
    min_per_min: float = 20.0  # relevant events a minute the cohort needs to be eligible
    change_fields: tuple[str, ...] = ("prompt_version", "model_version", "policy_version")
    ramp: bool = False
    #: "incident": the effect holds from start to end; "rest": from the start to the end of
    #: the file (a change that stays); "file": the whole file, with a daily cycle.
    span: Literal["incident", "rest", "file"] = "incident"
    per_min: float | None = None  # the tenant cohort nearest this many relevant events a minute
    minutes: float | None = None  # a fixed duration
    background: Effect = ()  # the chosen cohort's normal, for the whole file
    cycle: float = 0.0  # span "file": the effect times 1 +- this over the day (cycle_factor)
    cycle_period: float = 86400.0  # ...or over this many seconds (a cycle that is not a day)
    # Benign labels: the most severe alert allowed, and the longest it may fire.
    max_severity: str | None = None
    max_firing_s: float | None = None
    #: The model the cohort switches to during the incident (a pricier one: spend).
    model_to: str | None = None
    #: Versions deployed one after another during the incident (prompt churn): its change,
    #: then this many more, evenly spaced.
    churn: int = 0
    #: Issue 19. The share of the cohort's traces that run the incident's change and its
    #: effect (a canary inside production traffic); the rest stay as they were.
    share: float = 1.0
    #: An earlier benign change that stays: (field, seconds before the incident, fleet-wide
    #: (every app) or only the incident's app). The alert must still name the later one.
    prelude: tuple[str, float, bool] | None = None
    #: The change is a new version of one of the app's tools (its first, renamed
    #: "<name>-v2"), and the effect holds for that tool's calls only.
    tool_swap: bool = False


def _d(name: str, signal: str, attr: str, factor: float, floor: float = 0.0,
       expected: str = "sev2", **kw: Any) -> Scenario:
    """A drift scenario that moves one profile attribute.

    Detection power is a matter of counts: a tenfold rise of a 1 % rate is ~1 event a window
    on 10 relevant events a minute and ~10 on 100. Incidents are placed on cohorts with at
    least 100 relevant events a minute (unless a scenario says otherwise), where the issue's
    "within three windows" is statistically reachable at a threshold that stays quiet on
    clean traffic; the README gives the detection limits for smaller cohorts."""
    kw.setdefault("min_per_min", 100.0)
    return Scenario(name, "drift", (signal,), expected, ((attr, factor, floor),), **kw)


_NO_CHANGE: Final = ()
SCENARIOS: Final[dict[str, Scenario]] = {s.name: s for s in (
    Scenario("unauthorized_tool", "hard_rule", ("unauthorized_tool_call",), "sev1",
             apps=AGENT_APPS, scope="tenant", relevant="tool", min_per_min=0.0,
             change_fields=_NO_CHANGE),
    Scenario("unapproved_action", "hard_rule", ("unapproved_side_effect",), "sev1",
             apps=("payments-agent",), scope="tenant", relevant="tool", min_per_min=0.0,
             change_fields=_NO_CHANGE),
    Scenario("secret_leak", "hard_rule", ("secret_leak",), "sev1", scope="tenant",
             min_per_min=0.0, change_fields=_NO_CHANGE),
    _d("pii_leak", "safety_pii", "p_pii", 20, 0.06, expected="sev1",
       change_fields=("policy_version", "prompt_version")),
    _d("refusal_spike", "refusal_rate", "p_refusal", 5),
    # Absence is slow evidence: P(0 | mu) < 3e-7 needs mu ~ 15 expected refusals, so a
    # collapse is visible within three windows only where ~5 refusals a minute are normal.
    # A guardrail removed by a policy or prompt deploy: app-wide, as such deploys are.
    _d("refusal_collapse", "refusal_rate", "p_refusal", 0.03, apps=("support-agent",),
       scope="app", min_per_min=200, change_fields=("policy_version", "prompt_version")),
    _d("tool_loop", "tool_calls_per_chat", "tools_mean", 4, apps=AGENT_APPS, relevant="chat"),
    _d("schema_failures", "schema_invalid_rate", "p_schema_invalid", 10, 0.15, apps=TOOL_APPS,
       relevant="tool"),
    _d("fabricated_results", "fabricated_tool_result_rate", "p_fabricated", 20, 0.06,
       apps=TOOL_APPS, relevant="tool"),
    _d("prompt_injection", "safety_prompt_injection", "p_inj", 25, 0.05,
       change_fields=("policy_version",)),
    _d("instruction_violations", "instruction_violation_rate", "p_iv", 10, 0.1),
    _d("format_failures", "output_format_failure_rate", "p_fmt_fail", 10, 0.2,
       apps=("sales-copilot", "payments-agent"), change_fields=("prompt_version",
                                                                 "model_version")),
    _d("human_overrides", "human_override_rate", "p_override", 12, 0.06, relevant="chat"),
    _d("memory_flood", "memory_write_rate", "p_memory", 8, 0.4, apps=AGENT_APPS,
       relevant="chat"),
    _d("retry_storm", "retry_rate", "p_retry", 8, 0.4, change_fields=("model_version",)),
    _d("error_burst", "error_rate", "p_error", 12, 0.12, change_fields=("model_version",)),
    _d("token_blowup", "output_tokens", "out_med", 3, change_fields=("model_version",
                                                                     "prompt_version")),
    _d("latency_regression", "latency_ms", "lat_med", 2.5, change_fields=("model_version",)),
    # Volume is context, not misbehaviour: a cohort's traffic falling away is a sev3 to look at.
    _d("traffic_drop", "volume", "volume", 0.15, expected="sev3", scope="app", relevant="all"),
    _d("slow_ramp", "refusal_rate", "p_refusal", 5, ramp=True),
    _d("canary_regression", "refusal_rate", "p_refusal", 5, expected="sev3",
       apps=("support-agent",), env="canary", scope="app", min_per_min=0.0),
    # One minute carries evidence only where there is volume: ~150 model calls at a 2-3 %
    # baseline expect ~4 refusals, so eightfold is ~30 — a clear single-window anomaly.
    _d("blip", "refusal_rate", "p_refusal", 8, expected="sev4", min_per_min=150,
       change_fields=_NO_CHANGE),
    Scenario("benign_deploy", "benign", (), None, scope="app", min_per_min=0.0),
    # Issue 12: shapes real traffic has. The first four must be detected at small volume, the
    # benign ones adopted or ignored; none is in the default set (see DEFAULT_SCENARIOS).
    _d("rare_wave", "safety_prompt_injection", "p_inj", 0.0, 0.10, scope="tenant",
       relevant="chat", per_min=7.0, minutes=20.0, background=(("p_inj", 0.0, 0.001),),
       change_fields=_NO_CHANGE),
    _d("lowvol_violations", "instruction_violation_rate", "p_iv", 0.0, 0.40, scope="tenant",
       per_min=5.0, change_fields=("prompt_version",)),
    _d("fabricated_midsize", "fabricated_tool_result_rate", "p_fabricated", 0.0, 0.08,
       apps=TOOL_APPS, scope="tenant", relevant="tool", per_min=30.0,
       change_fields=("model_version",)),
    # A model upgrade that is slower and wordier, and stays: adopt it within two hours.
    Scenario("benign_shift", "benign", ("latency_ms", "output_tokens"), None,
             (("lat_med", 1.6, 0.0), ("out_med", 1.3, 0.0)), scope="app", min_per_min=0.0,
             change_fields=("model_version",), span="rest", max_severity="sev2",
             max_firing_s=7200.0),
    Scenario("quantity_shift", "benign", ("input_tokens",), None, (("in_med", 2.0, 0.0),),
             scope="app", min_per_min=0.0, change_fields=_NO_CHANGE, span="rest",
             max_severity="sev2", max_firing_s=7200.0),
    Scenario("quantity_cycle", "benign", ("latency_ms",), None, (("lat_med", 1.0, 0.0),),
             scope="app", min_per_min=0.0, change_fields=_NO_CHANGE, span="file", cycle=0.4,
             max_severity="sev4", max_firing_s=7200.0),
    # A cycle that is not a day (a batch job every 40 minutes slows the app down and back):
    # the latency baseline finds the period from the data.
    Scenario("quantity_short_cycle", "benign", ("latency_ms",), None, (("lat_med", 1.0, 0.0),),
             scope="app", min_per_min=0.0, change_fields=_NO_CHANGE, span="file", cycle=0.4,
             cycle_period=2400.0, max_severity="sev4", max_firing_s=7200.0),
    Scenario("volume_surge", "benign", ("volume",), None, (("volume", 3.0, 0.0),),
             scope="tenant", relevant="all", min_per_min=300.0, change_fields=_NO_CHANGE,
             minutes=20.0, max_severity="sev4"),
    # Issue 14: what users page on elsewhere with static thresholds. Opt-in too, and they
    # need a config with evaluators and prices (see signals_config).
    # A hallucination regression: faithfulness scores fall by 15 % where they are measured.
    _d("eval_drop", "eval_faithfulness", "eval_mult", 0.85, apps=("support-agent",),
       min_per_min=60.0, change_fields=("model_version", "prompt_version")),
    # A deploy moves a cohort to a five times pricier model: spend is recorded, not paged.
    Scenario("spend_surge", "drift", ("cost",), "sev4", apps=("support-agent",),
             min_per_min=20.0, change_fields=("model_version",), model_to="m-xlarge"),
    # Issue 17's leading indicators, opt-in as well: early warnings, sev3 at most. The fields
    # are reported by the chosen app only (its background), from the first event on.
    # Hand-offs to a human quadruple after a prompt change.
    _d("escalation_surge", "escalation_rate", "p_escalate", 4, 0.1, expected="sev3",
       scope="app", background=(("p_escalate", 0.0, 0.02),), change_fields=("prompt_version",)),
    # The outputs' entropy collapses (stuck, repetitive answers) after a model change.
    _d("entropy_collapse", "output_entropy", "entropy_med", 0.4, expected="sev3", scope="app",
       background=(("entropy_med", 0.0, 2.5),), change_fields=("model_version",)),
    # A deploy followed by three more prompt versions within forty minutes.
    Scenario("prompt_churn", "drift", ("prompt_churn",), "sev4", scope="app", min_per_min=0.0,
             change_fields=("prompt_version",), churn=3, minutes=40.0),
    # Issue 19: which change to roll back, by the events. Opt-in like the ones above.
    # A benign prompt deploy, then 20 minutes later a model version that breaks the output
    # format: the alert must name the model version, not the newer-looking prompt.
    _d("two_changes", "output_format_failure_rate", "p_fmt_fail", 10, 0.2,
       apps=("sales-copilot", "payments-agent"), scope="app",
       change_fields=("model_version",), prelude=("prompt_version", 1200.0, False)),
    # A model version on 10 % of an app's production traffic whose calls refuse six times as
    # often: the app's overall refusal rate moves by half, its events' by sixfold.
    _d("canary_version", "refusal_rate", "p_refusal", 6, 0.25, apps=("support-agent",),
       scope="app", min_per_min=0.0, change_fields=("model_version",), share=0.1),
    # A new version of one tool whose calls break the argument schema.
    _d("tool_version", "schema_invalid_rate", "p_schema_invalid", 20, 0.3,
       apps=("support-agent", "coding-assistant"), scope="app", relevant="tool",
       min_per_min=0.0, change_fields=(), tool_swap=True),
    # A fleet-wide policy bump half an hour before an app's prompt deploy that makes errors.
    _d("fleet_then_app", "error_rate", "p_error", 12, 0.12, scope="app", min_per_min=0.0,
       change_fields=("prompt_version",), prelude=("policy_version", 1800.0, True)),
)}
#: Issue 14's evaluators and token prices for the simulated apps and models.
SIM_EVALUATORS: Final = ("faithfulness", "relevance")
SIM_PRICES: Final = {"m-large": (3.0, 15.0), "m-xlarge": (15.0, 75.0), "m-medium": (0.5, 1.5),
                     "m-code": (1.0, 4.0)}


def signals_config(default_toml: str) -> str:
    """The default config's text with the simulated world's evaluators and prices: what the
    eval_drop and spend_surge scenarios need (the default config has neither)."""
    names = ", ".join(f'"{e}"' for e in SIM_EVALUATORS)
    out = default_toml.replace("\nevaluators = []", f"\nevaluators = [{names}]", 1)
    return out + "".join(f'\n[spend.prices."{m}"]\ninput_per_million = {i}\n'
                         f"output_per_million = {o}\n" for m, (i, o) in SIM_PRICES.items())
#: What ``simulate`` injects when no scenario is named: the set before issue 12, so a seed
#: keeps giving the same traffic.
DEFAULT_SCENARIOS: Final = tuple(SCENARIOS)[:tuple(SCENARIOS).index("benign_deploy") + 1]


@dataclass
class PlannedIncident:
    """One planned incident (the simulator's ground truth; the detector's own incident state is
    detector.core.lifecycle.Incident); the generator fills in what happened (offending events)."""

    scenario: Scenario
    start: float  # epoch seconds; for hard rules the planned time of the first offending event
    end: float
    cohort: Cohort
    ramp_end: float | None = None
    change: tuple[str, str, str] | None = None  # (field, baseline, now)
    #: The scenario's earlier benign change: (field, when, app -> its new value).
    prelude: tuple[str, float, dict[str, str]] | None = None
    offend_at: list[float] = field(default_factory=list)  # hard rules: planned offending times
    trace_ids: list[str] = field(default_factory=list)
    first_ms: int | None = None  # hard rules: actual first/last offending event times
    last_ms: int | None = None
    id: str = ""

    def step(self, now: float) -> int:
        """Which of a churning incident's versions is live at ``now`` (0: its change)."""
        n = self.scenario.churn
        if not n or now < self.start:
            return 0
        return min(n, int((now - self.start) // ((self.end - self.start) / (n + 1))))

    def change_at(self, now: float) -> tuple[str, str, str] | None:
        """The change live at ``now``: a churning incident's moves on by one per step."""
        step = self.step(now)
        if self.change is None or not step:
            return self.change
        return (self.change[0], self.change[1], _bump(self.change[2], step))

    def covers(self, c: Cohort) -> bool:
        t, app, env = self.cohort
        return app == c[1] and env == c[2] and (t is None or t == c[0])



def overlaps(a: Cohort, b: Cohort) -> bool:
    """Whether two cohorts share traffic (a whole-app cohort overlaps its tenants')."""
    return a[1:] == b[1:] and (a[0] is None or b[0] is None or a[0] == b[0])


def daily_factor(ts: float) -> float:
    """Relative traffic at ``ts``: 1.0 at the 14:00 UTC peak, 0.5 at the 02:00 trough."""
    hour = (ts % 86400.0) / 3600.0
    return 0.75 + 0.25 * math.cos(2.0 * math.pi * (hour - 14.0) / 24.0)


def cycle_factor(ts: float, amplitude: float, period: float = 86400.0) -> float:
    """A time-of-day pattern of +-``amplitude``, highest at the 14:00 UTC traffic peak (for
    another ``period``, at the same point of its cycle).

    >>> cycle_factor(14 * 3600.0, 0.4), round(cycle_factor(2 * 3600.0, 0.4), 6)
    (1.4, 0.6)
    >>> round(cycle_factor(1400.0, 0.4, 2400.0), 6), round(cycle_factor(200.0, 0.4, 2400.0), 6)
    (1.4, 0.6)
    """
    phase = (ts % period) / period
    return 1.0 + amplitude * math.cos(2.0 * math.pi * (phase - 14.0 / 24.0))


@dataclass(frozen=True)
class World:
    """Tenants, their apps and cohorts; ``share`` is each cohort's fraction of traces."""

    apps: dict[str, AppProfile]
    tenants: tuple[str, ...]
    regions: dict[str, tuple[str, str]]  # tenant -> (home, secondary)
    cohorts: tuple[tuple[str, str, str], ...]  # (tenant, app, environment)
    share: tuple[float, ...]

    @classmethod
    def build(cls, tenants: int = 40) -> World:
        """The world of ``tenants`` tenants (40 by default; more for many small cohorts: the
        volume skew's taper stretches with the square of the count, so the last ones still
        speak)."""
        if tenants < len(_TOP_TENANT_APPS):
            raise ValueError(f"tenants must be at least {len(_TOP_TENANT_APPS)}")
        rng = random.Random("simulated-world-v1")  # the same world for every seed
        names_t = tuple(f"t{k:02d}" for k in range(1, tenants + 1))
        taper = 8.0 * (tenants / 40) ** 2
        weights = [k ** -0.8 * math.exp(-k / taper) for k in range(1, tenants + 1)]
        names, app_w = list(APPS), [0.35, 0.25, 0.25, 0.15]
        regions: dict[str, tuple[str, str]] = {}
        cohorts: list[tuple[str, str, str]] = []
        share: list[float] = []
        for k, (tenant, w) in enumerate(zip(names_t, weights, strict=True)):
            if k < len(_TOP_TENANT_APPS):
                used: tuple[str, ...] = _TOP_TENANT_APPS[k]
            else:
                n = rng.choice((1, 1, 2, 2, 3))
                used = tuple(dict.fromkeys(rng.choices(names, app_w, k=n)))
            home = REGIONS[k % 3]
            regions[tenant] = (home, rng.choice([r for r in REGIONS if r != home]))
            app_split = [0.6 ** i for i in range(len(used))]  # the first app is the main one
            for app, a in zip(used, app_split, strict=True):
                for env, e in APPS[app].envs:
                    cohorts.append((tenant, app, env))
                    share.append(w * a / sum(app_split) * e)
        total = sum(share)
        return cls(dict(APPS), names_t, regions, tuple(cohorts),
                   tuple(s / total for s in share))

    def trace_rate(self, rate: float, start: float, end: float) -> float:
        """Traces/s at daily factor 1.0 so that the mean over [start, end) is ``rate`` events/s."""
        steps = max(1, int((end - start) // 60))
        mean_f = sum(daily_factor(start + (i + 0.5) * (end - start) / steps)
                     for i in range(steps)) / steps
        per_trace = sum(s * self.apps[c[1]].events_per_trace()
                        for c, s in zip(self.cohorts, self.share, strict=True))
        return rate / (mean_f * per_trace)

    def relevant_per_trace(self, app: str, relevant: str) -> float:
        a = self.apps[app]
        if relevant == "all":
            return a.events_per_trace()
        if relevant == "tool":
            return (1.0 - a.p_textcomp) * a.tools_mean
        return 1.0 - a.p_textcomp if relevant == "chat" else 1.0


def _bump(value: str, n: int) -> str:
    """The n-th next version after ``value``: v42 -> v43, p7 -> p8, 2025-12-01 -> 2025-12-02."""
    m = re.search(r"(\d+)$", value)
    if not m:
        return f"{value}.{n}"
    digits = m.group(1)
    return value[: m.start()] + str(int(digits) + n).zfill(len(digits))


def _cohort_rates(world: World, k: float, sc: Scenario, when: float) -> dict[Cohort, float]:
    """Relevant events a minute per eligible tenant cohort and per whole-app cohort."""
    rates: dict[Cohort, float] = {}
    f = 60.0 * k * when
    for (tenant, app, env), s in zip(world.cohorts, world.share, strict=True):
        if app not in sc.apps or env != sc.env:
            continue
        r = f * s * world.relevant_per_trace(app, sc.relevant)
        rates[(tenant, app, env)] = r
        rates[(None, app, env)] = rates.get((None, app, env), 0.0) + r
    return rates


def _pick_cohort(rng: random.Random, world: World, k: float, sc: Scenario, start: float,
                 end: float, busy: list[Cohort]) -> Cohort | None:
    when = min(daily_factor(start), daily_factor(end), daily_factor((start + end) / 2))
    rates = {c: r for c, r in _cohort_rates(world, k, sc, when).items()
             if r > 0 and not any(overlaps(b, c) for b in busy)}
    tenant_c = [c for c in rates if c[0] is not None and sc.scope != "app"]
    app_c = [c for c in rates if c[0] is None and sc.scope != "tenant"]
    ok_t = [c for c in tenant_c if rates[c] >= sc.min_per_min]
    ok_a = [c for c in app_c if rates[c] >= sc.min_per_min]
    per_min = sc.per_min
    if per_min is not None and tenant_c:  # a stated size: the nearest tenant cohort
        return min(tenant_c, key=lambda c: (abs(math.log(rates[c] / per_min)), c))
    if sc.min_per_min == 0.0:  # hard rules and benign changes: any cohort, weighted by volume
        pool = tenant_c or app_c
        return rng.choices(pool, [rates[c] for c in pool])[0] if pool else None
    if ok_t and (not ok_a or rng.random() < 0.7):
        return rng.choice(ok_t)
    if ok_a:
        return rng.choice(ok_a)
    # Too little traffic anywhere: the busiest cohort is the best that can be done.
    pool = app_c or tenant_c
    return max(pool, key=lambda c: (rates[c], c[1])) if pool else None


def _durations(sc: Scenario, u: float, c: float) -> tuple[float, float]:
    """(duration, ramp) in seconds; ``c`` in [0, 1] compresses toward the minimum."""
    s = u * (1.0 - c)
    if sc.name == "blip":
        return 60.0, 0.0
    if sc.minutes is not None:
        return 60.0 * sc.minutes, 0.0
    if sc.kind == "hard_rule":
        return 60.0 * (2 + 4 * s), 0.0
    # Whole minutes, so incidents line up with 60 s windows.
    if sc.kind == "benign":
        return 60.0 * round(10 + 10 * s), 0.0
    if sc.ramp:
        ramp = 60.0 * round(60 + 30 * s)
        return ramp + 60.0 * round(5 + 5 * s), ramp
    return 60.0 * round(10 + 15 * s), 0.0


def _try_plan(names: list[str], us: list[tuple[float, float]], world: World, k: float,
              seed: int, t0: float, t_end: float, c: float,
              stretch: float) -> list[PlannedIncident] | None:
    rng = random.Random(f"{seed}:plan")
    queue = list(range(len(names)))
    placed: list[PlannedIncident] = []
    lanes = [t0, t0 + 300.0]  # two lanes: at most two incidents active at once
    used = [False, False]
    while queue:
        lane = 0 if lanes[0] <= lanes[1] else 1
        for qi, i in enumerate(queue):
            sc = SCENARIOS[names[i]]
            dur, ramp = _durations(sc, us[i][0], c)
            gap = 60.0 * stretch * (3 + 12 * us[i][1] * (1 - c)) if used[lane] else 0.0
            start = math.ceil((lanes[lane] + gap) / 60.0) * 60.0  # align to a minute
            end = start + dur
            near = [p for p in placed if p.start < end + 180 and p.end + 180 > start]
            if any(set(p.scenario.signals) & set(sc.signals) for p in near):
                continue
            # The same signal on the same traffic needs a clear gap, or two incidents blur.
            busy = [p.cohort for p in near] + [
                p.cohort for p in placed if set(p.scenario.signals) & set(sc.signals)
                and p.start < end + SAME_SIGNAL_GAP_S and p.end + SAME_SIGNAL_GAP_S > start]
            cohort = _pick_cohort(rng, world, k, sc, start, end, busy)
            if cohort is None:
                continue
            inc = PlannedIncident(sc, start, end, cohort, ramp_end=start + ramp if ramp else None)
            if sc.kind == "hard_rule":
                n = rng.randint(3, 6)
                later = sorted(start + rng.uniform(1.0, dur) for _ in range(n - 1))
                inc.offend_at = [start, *later]
            placed.append(inc)
            lanes[lane], used[lane] = end, True
            queue.pop(qi)
            break
        else:  # nothing fits beside what is active: wait for the next incident to end
            later = [p.end for p in placed if p.end > lanes[lane]]
            lanes[lane] = min(later) if later else lanes[lane] + 60.0
        if min(lanes) > t_end:
            return None
    if placed and max(p.end for p in placed) + TAIL_S > t_end:
        return None
    return placed


def plan(names: list[str], world: World, k: float, seed: int, start: float,
         end: float) -> list[PlannedIncident]:
    """Place ``names`` after the warm-up, compressing spacing when time is short.

    ``k`` is the trace rate at daily factor 1 (see :meth:`World.trace_rate`).
    Raises ValueError when the scenarios cannot fit between the warm-up and ``end``.
    """
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)}")
    whole = [_whole_file(SCENARIOS[n], world, seed, start, end) for n in names
             if SCENARIOS[n].span == "file"]
    names = [n for n in names if SCENARIOS[n].span != "file"]
    if not names:
        return _number(whole)
    rng = random.Random(f"{seed}:order")
    names = list(names)
    rng.shuffle(names)
    names.sort(key=lambda n: not SCENARIOS[n].ramp)  # the long ramp first packs better
    us = [(rng.random(), rng.random()) for _ in names]
    # Spread incidents over long runs (wider gaps); compress them into short ones.
    tries = [(s, 0.0) for s in (8.0, 5.0, 3.0, 2.0, 1.5)] + [(1.0, n / 20) for n in range(21)]
    for stretch, c in tries:
        placed = _try_plan(names, us, world, k, seed, start + WARMUP_S, end, c, stretch)
        if placed is not None:
            break
    else:
        need = _min_hours(names)
        raise ValueError(
            f"{(end - start) / 3600:g} h is too short for {len(names)} scenario(s) after the "
            f"{WARMUP_S / 60:.0f}-minute warm-up; use --hours {need:g} or more, or fewer "
            "scenarios")
    placed.sort(key=lambda p: (p.start, p.scenario.name))
    _assign_versions(placed, world, seed)
    for p in placed:
        if p.scenario.span == "rest":  # placed like any incident; it then stays
            p.end = end
    return _number(whole + placed)


def _number(placed: list[PlannedIncident]) -> list[PlannedIncident]:
    placed.sort(key=lambda p: (p.start, p.scenario.name))
    for n, p in enumerate(placed, 1):
        p.id = f"inc-{n:02d}"
    return placed


def _whole_file(sc: Scenario, world: World, seed: int, start: float, end: float) -> PlannedIncident:
    """A scenario that holds from the first event to the last, on one app (its own draw, so
    the other incidents' plan does not change)."""
    rng = random.Random(f"{seed}:{sc.name}")
    apps = sorted({c[1] for c in world.cohorts if c[1] in sc.apps and c[2] == sc.env})
    return PlannedIncident(sc, start, end, (None, rng.choice(apps), sc.env))


def _min_hours(names: list[str]) -> float:
    lane = sum(_durations(SCENARIOS[n], 0.0, 1.0)[0] + 180 for n in names) / 2
    return math.ceil((WARMUP_S + lane + TAIL_S) / 1800) / 2


def _assign_versions(placed: list[PlannedIncident], world: World, seed: int) -> None:
    """Give each incident (not blip or hard rules) its new version; benign deploys persist."""
    current = {a: dict(p.versions) for a, p in world.apps.items()}
    bumps: dict[tuple[str, str], int] = {}
    rng = random.Random(f"{seed}:versions")
    for p in placed:
        app = p.cohort[1]
        pre = p.scenario.prelude
        if pre is not None:
            fld, before, fleet = pre
            new: dict[str, str] = {}
            for a in sorted(world.apps) if fleet else [app]:   # each app its own next value
                n = bumps[(a, fld)] = bumps.get((a, fld), 0) + 1
                new[a] = current[a][fld] = _bump(world.apps[a].versions[_VERS.index(fld)][1], n)
            p.prelude = (fld, p.start - before, new)
        if p.scenario.tool_swap:
            old = world.apps[app].tools[0][0]
            p.change = ("tool_name", old, f"{old}-v2")
            continue
        fields = p.scenario.change_fields
        if not fields:
            continue
        fld = fields[rng.randrange(len(fields))]
        n = bumps[(app, fld)] = bumps.get((app, fld), 0) + 1
        base = current[app][fld]
        p.change = (fld, base, _bump(world.apps[app].versions[_VERS.index(fld)][1], n))
        if p.scenario.kind == "benign":
            current[app][fld] = p.change[2]
