"""The one config schema: a TOML file validated on load, errors naming the key and the problem.

msgspec converts the parsed TOML into typed, frozen structs; unknown keys are errors (a typo in
a threshold must not silently fall back to a default).

>>> cfg = load_config(None)
>>> cfg.windows.size_seconds, cfg.signal("refusal_rate").direction
(60.0, 'both')
>>> try:
...     parse_config({"windows": {"size_seconds": -1}})
... except ConfigError as e:
...     print(e)
windows.size_seconds: Expected `float` >= 1.0
>>> try:
...     parse_config({"signals": {"refusal_rate": {"threshold": float("inf")}}})
... except ConfigError as e:
...     print(e)
signals.refusal_rate.threshold: inf is not a finite number
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tomllib
from collections.abc import Collection
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, dataclass_transform

import msgspec
from msgspec import Meta, Struct, field

__all__ = ["AlertmanagerConfig", "Config", "ConfigError", "ContainmentRule", "Price",
           "SeverityRule", "SignalConfig", "check_alertmanager", "config_hash", "load_config",
           "parse_config"]

Positive = Annotated[float, Meta(gt=0)]
NonNeg = Annotated[float, Meta(ge=0)]
PosInt = Annotated[int, Meta(ge=1)]
Severity = Literal["sev1", "sev2", "sev3", "sev4"]
Direction = Literal["up", "down", "both"]
EvaluatorName = Annotated[str, Meta(max_length=48, pattern=r"^[a-z0-9]+(_[a-z0-9]+)*$")]
COHORT_FIELDS = ("tenant", "region", "app", "environment", "model")


class ConfigError(ValueError):
    """A config problem; the message starts with the dotted key."""


# msgspec gives a base's frozen=True to its subclasses (kw_only is per class): say so to mypy.
@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class _Base(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Cohorts(_Base):
    # Coarse to fine; each level must extend the one before (a parent's fields ⊂ child's).
    levels: list[list[Literal["tenant", "region", "app", "environment", "model"]]] = field(
        default_factory=lambda: [["app", "environment"], ["tenant", "app", "environment"]]
    )
    own_baseline_after_windows: PosInt = 30
    group_min_children: PosInt = 3
    # Distinct finest-level cohorts one stage 1 tracks; later new ones count under "other".
    max_cohorts: PosInt = 10_000


class Windows(_Base):
    # 1 s to 1 day: a micro-window makes replay crawl and scores only counting noise.
    size_seconds: Annotated[float, Meta(ge=1, le=86400)] = 60.0
    allowed_lateness_seconds: NonNeg = 30.0  # ≤ MAX_LATENESS_WINDOWS windows (checked below)


class Baselines(_Base):
    warmup_windows: PosInt = 20
    fast_half_life_windows: Positive = 30.0
    slow_half_life_windows: Positive = 720.0
    season_period_seconds: Positive = 86400.0
    season_bins: Annotated[int, Meta(ge=1, le=168)] = 24
    # A quantity finds its cycle's period from the data (else always season_period_seconds).
    season_find_period: bool = True
    max_dispersion: Annotated[float, Meta(ge=1)] = 25.0
    # An anomalous episode this long is adopted as the new normal (its alert resolves).
    adopt_after_windows: PosInt = 90


class SignalConfig(_Base):
    enabled: bool = True
    threshold: Positive = 5.0
    direction: Direction = "up"
    # An up-alert on a rate needs at least this many events in the numerator.
    min_count: NonNeg = 3.0
    runbook_url: str | None = None
    actions: dict[Severity, list[str]] = field(default_factory=dict)


class Alerting(_Base):
    resolve_after_clean_windows: PosInt = 5
    # Hysteresis against flapping: while firing, a score above clear_ratio × threshold
    # still counts as anomalous.
    clear_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.6
    evidence_trace_ids: Annotated[int, Meta(ge=0, le=20)] = 20
    version_share: Annotated[float, Meta(gt=0, le=1)] = 0.05
    # A known version first seen this recently is still a rollback candidate (slow drifts).
    suspect_lookback_windows: PosInt = 120
    # Attribution: the per-value counters' half-life, the evidence a value needs to be
    # named, and whether that evidence alone can make a rate's window anomalous.
    attribution_half_life_windows: Positive = 30.0
    attribution_min_score: Positive = 3.0
    attribution_detects: bool = True


class SeverityRule(_Base):
    severity: Severity
    signals: list[str] = field(default_factory=lambda: ["*"])
    environments: list[str] = field(default_factory=lambda: ["*"])
    min_persistence: PosInt = 1
    min_score: NonNeg = 0.0
    # A shift confirmed by the sequential evidence meets min_persistence too.
    confirmed: bool = True


class Rebaseline(_Base):
    """Force a fresh baseline for matching (cohort, signal) pairs from ``at`` on (once)."""

    at: Annotated[datetime, Meta(tz=True)]   # RFC 3339 with an offset (TOML or a string)
    match: dict[str, str] = field(default_factory=dict)
    signals: list[str] = field(default_factory=lambda: ["*"])


class Override(_Base):
    """Lower (or raise) thresholds where the cohort matches, e.g. a sensitive app."""

    match: dict[str, str]
    signals: list[str] = field(default_factory=lambda: ["*"])
    threshold_factor: Positive = 1.0


class HardRules(_Base):
    unauthorized_tool_call: bool = True
    unapproved_side_effect: bool = True
    leak_labels: list[str] = field(default_factory=lambda: ["secret_leak"])
    # Calls to these tools fire unapproved_side_effect unless a human approved them.
    sensitive_tools: list[str] = field(default_factory=list)


class AlertmanagerConfig(_Base):
    """The Alertmanager sink's settings: the one schema, read by the sink as it is."""

    urls: list[str] = field(default_factory=list)
    cohort_labels: list[str] = field(default_factory=lambda: ["tenant", "app", "environment"])
    resend_interval_seconds: Positive = 60.0
    resolved_resend_seconds: NonNeg = 300.0   # 0: send a resolve once, never again
    timeout_seconds: Positive = 5.0
    max_queue: PosInt = 10000
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    basic_auth_user: str | None = None
    basic_auth_password: str | None = None
    basic_auth_password_file: str | None = None   # read at each send: mounted secrets rotate
    bearer_token: str | None = None
    bearer_token_file: str | None = None
    generator_url: str | None = None

    def __repr__(self) -> str:   # secrets stay out of logs and tracebacks
        shown = (f"{k}={'***' if k in _SECRETS and v else repr(v)}"
                 for k in self.__struct_fields__ if (v := getattr(self, k)) is not None)
        return f"AlertmanagerConfig({', '.join(shown)})"


_SECRETS = frozenset({"basic_auth_password", "bearer_token"})


HttpMethod = Literal["POST", "PUT", "PATCH", "DELETE"]
#: What a containment template may name: the alert's fields and its cohort's (empty if absent).
TEMPLATE_FIELDS = ("id", "status", "severity", "signal", "starts_at", "action",
                   "suspected_change", *COHORT_FIELDS)
BodyValue = str | int | float | bool
#: What a [links] template may name: the alert's fields and its cohort's (empty if absent), and
#: an hour either side of the alert in epoch milliseconds.
LINK_FIELDS = ("id", "status", "severity", "signal", "from_ms", "to_ms", *COHORT_FIELDS)


class ContainmentRule(_Base):
    """One containment hook: the alerts it acts on and the HTTP call it makes (and undoes)."""

    name: Annotated[str, Meta(min_length=1, max_length=48, pattern=r"^[a-z0-9]+(_[a-z0-9]+)*$")]
    url: str
    severities: list[Severity] = field(default_factory=lambda: ["sev1"])
    signals: list[str] = field(default_factory=lambda: ["*"])
    environments: list[str] = field(default_factory=lambda: ["*"])
    match: dict[str, str] = field(default_factory=dict)
    dry_run: bool = True
    method: HttpMethod = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, BodyValue] = field(default_factory=dict)
    undo_url: str | None = None
    undo_method: HttpMethod = "POST"
    undo_body: dict[str, BodyValue] = field(default_factory=dict)
    secret_file: str | None = None
    secret_env: str | None = None
    signature_header: str = "X-Detector-Signature"
    timeout_seconds: Annotated[float, Meta(gt=0, le=60)] = 5.0
    max_attempts: Annotated[int, Meta(ge=1, le=10)] = 4
    backoff_seconds: Annotated[float, Meta(gt=0, le=60)] = 1.0


class Indicators(_Base):
    """Leading indicators across cohorts (detector/core/indicators.py)."""

    # Signals (names or "prefix*") compared between an app's canary and production; volume
    # never is (a canary takes a slice of the traffic).
    canary_signals: list[str] = field(default_factory=lambda: ["*"])
    # Prompt versions first seen within this many windows count as churn.
    churn_windows: PosInt = 360


class Links(_Base):
    """URL templates filled in on every alert (none by default)."""

    dashboard_url: str | None = None
    generator_url: str | None = None


class Evidence(_Base):
    """Where sev1/sev2 evidence records go (none by default)."""

    kafka_topic: str | None = None
    jsonl: str | None = None
    severities: list[Severity] = field(default_factory=lambda: ["sev1", "sev2"])


class Sinks(_Base):
    jsonl: str | None = None
    log: bool = True
    kafka: bool = True
    alertmanager: AlertmanagerConfig = field(default_factory=AlertmanagerConfig)


class TraceTopic(_Base):
    topic: Annotated[str, Meta(min_length=1, max_length=249)]
    format: InputFormat = "native"


class KafkaConfig(_Base):
    brokers: str = "127.0.0.1:9092"
    traces_topic: str = "ai-traces"
    # More trace topics, each with its format (e.g. the Collector's "otlp_spans", otlp_proto).
    extra_traces_topics: list[TraceTopic] = field(default_factory=list)
    alerts_topic: str = "ai-alerts"
    dead_letter_topic: str = "ai-traces-dlq"
    partitions: PosInt = 4
    replication_factor: PosInt = 1
    group: str = "ai-detector"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    batch_max_messages: PosInt = 1000
    idle_partition_timeout_seconds: Positive = 30.0
    # Consumer-group session: a dead worker's partitions move after this long.
    session_timeout_seconds: Positive = 10.0
    # Stage 1 hands its partials to stage 2 (and commits) this often.
    flush_interval_seconds: Positive = 0.5
    # Longest a consumer's fetch waits for new records (stage 1 and stage 2). Kafka answers a
    # waiting fetch when records arrive; Tansu only at its next look, a share of this wait.
    fetch_max_wait_seconds: Annotated[float, Meta(gt=0, le=10)] = 0.1
    # Stage 1's fetch size (a quarter per partition), and about the bytes of decompressed
    # records it takes from its fetches at once: a fetch's limit counts compressed bytes.
    fetch_max_bytes: Annotated[int, Meta(ge=1 << 20, le=1 << 30)] = 8 << 20
    # Stage 2 writes its state to the table (and acks its input) at most this often; a
    # successor resumes from the last write, its input since then delivered again (0: every
    # batch).
    state_write_interval_seconds: Annotated[float, Meta(ge=0, le=60)] = 1.0


class MetricsConfig(_Base):
    host: str = "0.0.0.0"
    port: Annotated[int, Meta(ge=0, le=65535)] = 9464
    cohort_top_k: Annotated[int, Meta(ge=0, le=1000)] = 20


InputFormat = Literal["native", "otlp_proto", "otlp_json"]
AttrNames = Annotated[list[Annotated[str, Meta(min_length=1, max_length=256)]], Meta(max_length=8)]


def _names(*names: str) -> Any:
    return field(default_factory=lambda: list(names))


class OtlpMapping(_Base):
    """Where each contract field comes from in an OTLP span (detector/core/otlp.py): attribute
    names tried in order, each on the span and then on its resource."""

    tenant: AttrNames = _names("tenant.id", "service.namespace")
    region: AttrNames = _names("cloud.region")
    app: AttrNames = _names("gen_ai.agent.name", "service.name")
    environment: AttrNames = _names("deployment.environment.name", "deployment.environment")
    model: AttrNames = _names("gen_ai.response.model", "gen_ai.request.model")
    model_version: AttrNames = _names("ai.model_version")
    prompt_version: AttrNames = _names("ai.prompt_version")
    policy_version: AttrNames = _names("ai.policy_version")
    input_tokens: AttrNames = _names("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    output_tokens: AttrNames = _names("gen_ai.usage.output_tokens",
                                      "gen_ai.usage.completion_tokens")
    finish_reason: AttrNames = _names("gen_ai.response.finish_reasons")
    refusal: AttrNames = _names("ai.refusal")
    instruction_violation: AttrNames = _names("ai.instruction_violation")
    output_format_valid: AttrNames = _names("ai.output_format_valid")
    safety_hits: AttrNames = _names("ai.safety_hits")
    retries: AttrNames = _names("ai.retries")
    error_type: AttrNames = _names("error.type")
    tool_name: AttrNames = _names("gen_ai.tool.name")
    tool_authorized: AttrNames = _names("ai.tool_authorized")
    tool_side_effect: AttrNames = _names("ai.tool_side_effect")
    tool_approved: AttrNames = _names("ai.tool_approved")
    schema_valid: AttrNames = _names("ai.schema_valid")
    tool_result_fabricated: AttrNames = _names("ai.tool_result_fabricated")
    tool_status: AttrNames = _names("ai.tool_status")
    memory_bytes: AttrNames = _names("ai.memory_bytes")
    # No convention names these either (GenAI's has neither an entropy nor a hand-off).
    output_entropy: AttrNames = _names("ai.output_entropy")
    escalated: AttrNames = _names("ai.escalated")
    # Finish reasons that mean the model declined (unless the refusal attribute says otherwise).
    refusal_finish_reasons: list[str] = _names("content_filter", "refusal")


class Input(_Base):
    max_message_bytes: PosInt = 1 << 20
    # The format of kafka.traces_topic's messages, and of replay's input by default.
    format: InputFormat = "native"
    otlp: OtlpMapping = field(default_factory=OtlpMapping)
    # Live streams only: events stamped further ahead of the wall clock are dead-lettered.
    max_future_seconds: Positive = 300.0
    safety_labels: list[str] = field(
        default_factory=lambda: ["pii", "toxicity", "prompt_injection", "jailbreak"]
    )
    # Evaluator names (as events.eval_key writes them) that get a signal eval_<name> each.
    evaluators: Annotated[list[EvaluatorName], Meta(max_length=16)] = field(default_factory=list)


class Price(_Base):
    input_per_million: NonNeg = 0.0    # per million input tokens
    output_per_million: NonNeg = 0.0   # per million output tokens


class Spend(_Base):
    """Token prices by the event's ``model``; a model priced 0 (both) has no cost signal."""

    prices: dict[str, Price] = field(default_factory=dict)
    default: Price = field(default_factory=Price)


class Config(_Base):
    input: Input = field(default_factory=Input)
    cohorts: Cohorts = field(default_factory=Cohorts)
    windows: Windows = field(default_factory=Windows)
    baselines: Baselines = field(default_factory=Baselines)
    alerting: Alerting = field(default_factory=Alerting)
    rules: HardRules = field(default_factory=HardRules)
    signals: dict[str, SignalConfig] = field(default_factory=dict)
    severity: list[SeverityRule] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)
    rebaseline: list[Rebaseline] = field(default_factory=list)
    containment: list[ContainmentRule] = field(default_factory=list)
    evidence: Evidence = field(default_factory=Evidence)
    links: Links = field(default_factory=Links)
    indicators: Indicators = field(default_factory=Indicators)
    spend: Spend = field(default_factory=Spend)
    sinks: Sinks = field(default_factory=Sinks)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def signal(self, name: str) -> SignalConfig:
        """The settings of one signal (defaults where the file names none)."""
        return self.signals.get(name) or (
            _DEFAULT_EVAL if name.startswith(EVAL_PREFIX) else _DEFAULT_SIGNAL)


_DEFAULT_SIGNAL = SignalConfig()
#: An evaluation score falling is the news: eval_* signals look down unless set otherwise.
EVAL_PREFIX = "eval_"
_DEFAULT_EVAL = SignalConfig(direction="down")
# More lateness than this many windows holds that many windows open per cohort for nothing.
MAX_LATENESS_WINDOWS = 10
# msgspec names the place as `$.signals.refusal_rate.threshold` or `$.severity[2]`.
_PATH = re.compile(r" - at `\$\.?(.*)`$")


def _semantic_checks(cfg: Config) -> None:
    from detector.core.signals import known_signals  # late: signals imports config types

    win = cfg.windows
    if win.allowed_lateness_seconds > MAX_LATENESS_WINDOWS * win.size_seconds:
        raise ConfigError(
            f"windows.allowed_lateness_seconds: {win.allowed_lateness_seconds:g} is more than "
            f"{MAX_LATENESS_WINDOWS} windows of {win.size_seconds:g} s"
        )
    levels = cfg.cohorts.levels
    if not levels or any(not lvl for lvl in levels):
        raise ConfigError("cohorts.levels: needs at least one non-empty level")
    for i in range(1, len(levels)):
        if not set(levels[i - 1]) < set(levels[i]):
            raise ConfigError(
                f"cohorts.levels[{i}]: must contain every field of level {i - 1} and more"
            )
    known = known_signals(cfg.input.safety_labels, cfg.rules.leak_labels, cfg.input.evaluators)
    for name in cfg.signals:
        if name not in known:
            raise ConfigError(f"signals.{name}: unknown signal (known: {', '.join(sorted(known))})")
    for i, rule in enumerate(cfg.severity):
        for s in rule.signals:
            if s != "*" and not s.endswith("*") and s not in known:
                raise ConfigError(f"severity[{i}].signals: unknown signal {s!r}")
    for what, matches in (("overrides", [o.match for o in cfg.overrides]),
                          ("rebaseline", [r.match for r in cfg.rebaseline])):
        for i, match in enumerate(matches):
            for k in match:
                if k not in COHORT_FIELDS:
                    raise ConfigError(f"{what}[{i}].match.{k}: not a cohort field")
    from detector.core.otlp import check_mapping  # late: otlp imports config types

    check_mapping(cfg)
    if not cfg.severity:
        raise ConfigError("severity: at least one rule is needed (the last one is the fallback)")
    check_alertmanager(cfg.sinks.alertmanager, need_urls=False)
    check_containment(cfg.containment, known)
    check_links(cfg.links)


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_OWN_LABELS = frozenset({"alertname", "severity", "sev", "signal"})


def check_alertmanager(am: AlertmanagerConfig, *, need_urls: bool = True) -> None:
    """What the types cannot say about ``[sinks.alertmanager]``; the error names the key.

    >>> check_alertmanager(AlertmanagerConfig(urls=["ftp://am"]))
    Traceback (most recent call last):
    ...
    detector.config.ConfigError: sinks.alertmanager.urls: 'ftp://am' is not an http(s) URL
    """
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"sinks.alertmanager.{key}: {why}")

    if need_urls and not am.urls:
        raise bad("urls", "at least one Alertmanager URL is required")
    for url in am.urls:
        if not re.match(r"^https?://[^/\s]+", url):
            raise bad("urls", f"{url!r} is not an http(s) URL")
    for name in am.cohort_labels:
        if not _LABEL_NAME.match(name) or name in _OWN_LABELS:
            raise bad("cohort_labels", f"{name!r} is not a free label name")
    if am.basic_auth_user is not None and (am.bearer_token or am.bearer_token_file):
        raise bad("basic_auth_user", "basic auth and a bearer token are mutually exclusive")
    if am.key_file and not am.cert_file:
        raise bad("key_file", "needs cert_file")


def check_links(links: Links) -> None:
    """``[links]`` templates: http(s) with a fixed host, naming known fields only.

    >>> check_links(Links(dashboard_url="https://g/d?x=${prompt}"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    detector.config.ConfigError: links.dashboard_url: unknown template field 'prompt' (known: ...)
    """
    for key in ("dashboard_url", "generator_url"):
        text = getattr(links, key)
        if text is None:
            continue
        if not re.match(r"^https?://[^/\s$?#]+", text):
            raise ConfigError(f"links.{key}: {text!r} is not an http(s) URL with a fixed host")
        if (why := _template_problem(text, LINK_FIELDS)) is not None:
            raise ConfigError(f"links.{key}: {why}")


def _template_problem(text: str, known: Collection[str]) -> str | None:
    """What is wrong with ``text`` as a string.Template over the fields ``known``, or None."""
    from string import Template

    t = Template(text)
    if not t.is_valid():
        return f"{text!r} is not a valid template ($name or ${{name}}; $$ for a dollar sign)"
    for name in t.get_identifiers():
        if name not in known:
            return f"unknown template field {name!r} (known: {', '.join(known)})"
    return None


def _templates(rule: ContainmentRule) -> list[tuple[str, str]]:
    """Every templated string of a rule, with its key."""
    out = [("url", rule.url)] + [(f"headers.{k}", v) for k, v in rule.headers.items()]
    out += [(f"body.{k}", v) for k, v in rule.body.items() if isinstance(v, str)]
    if rule.undo_url is not None:
        out.append(("undo_url", rule.undo_url))
    out += [(f"undo_body.{k}", v) for k, v in rule.undo_body.items() if isinstance(v, str)]
    return out


def check_containment(rules: list[ContainmentRule], known: Collection[str]) -> None:
    """What the types cannot say about ``[[containment]]``; the error names the key.

    >>> check_containment([ContainmentRule(name="x", url="http://f/${nope}")], set())
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    detector.config.ConfigError: containment[0].url: unknown template field 'nope' (known: id, ...)
    """
    seen: set[str] = set()
    for i, r in enumerate(rules):
        def bad(key: str, why: str, i: int = i) -> ConfigError:
            return ConfigError(f"containment[{i}].{key}: {why}")

        if r.name in seen:
            raise bad("name", f"{r.name!r} is used by an earlier rule (names must be unique)")
        seen.add(r.name)
        if "sev4" in r.severities:   # unconfirmed: record and watch, never act
            raise bad("severities", "sev4 never triggers containment")
        if not r.severities:
            raise bad("severities", "at least one of sev1, sev2, sev3")
        for s in r.signals:
            if s != "*" and not s.endswith("*") and s not in known:
                raise bad("signals", f"unknown signal {s!r}")
        for k in r.match:
            if k not in COHORT_FIELDS:
                raise bad(f"match.{k}", "not a cohort field")
        for key, url in (("url", r.url), ("undo_url", r.undo_url)):
            if url is not None and not re.match(r"^https?://[^/\s$]+", url):
                raise bad(key, f"{url!r} is not an http(s) URL with a fixed host")
        for key, text in _templates(r):
            if (why := _template_problem(text, TEMPLATE_FIELDS)) is not None:
                raise bad(key, why)
        for k, v in r.headers.items():
            if not re.match(r"^[A-Za-z0-9-]+$", k) or "\n" in v or "\r" in v:
                raise bad(f"headers.{k}", "not a valid header")
        if not re.match(r"^[A-Za-z0-9-]+$", r.signature_header):
            raise bad("signature_header", f"{r.signature_header!r} is not a header name")
        if r.secret_file is not None and r.secret_env is not None:
            raise bad("secret_file", "secret_file and secret_env are mutually exclusive")
        if not r.dry_run and r.secret_file is None and r.secret_env is None:
            # Whoever flips a kill switch on our say-so must be able to tell it was us.
            raise bad("dry_run", "a rule that calls (dry_run = false) needs secret_file or "
                                 "secret_env to sign its requests")


def _convert(data: object, typ: type, prefix: str) -> Any:
    """msgspec.convert with the error turned into "dotted.key: problem"."""
    try:
        return msgspec.convert(data, typ, strict=True)
    except msgspec.ValidationError as e:
        msg = str(e)
        m = _PATH.search(msg)
        where = m.group(1) if m else ""
        problem = msg[: m.start()] if m else msg
        if problem.startswith("Object contains unknown field"):
            key = problem.split("`")[1]
            where = f"{where}.{key}" if where else key
            problem = "unknown key"
        full = ".".join(x for x in (prefix, where) if x).replace(".[", "[")
        raise ConfigError(f"{full or '(top level)'}: {problem}") from None


def _reject_non_finite(data: object, where: str = "") -> None:
    """TOML allows inf and nan; no setting means anything with them (threshold = inf never
    fires, and nan compares false to every bound)."""
    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{where or '(top level)'}: {data} is not a finite number")
    if isinstance(data, dict):
        for k, v in data.items():
            _reject_non_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _reject_non_finite(v, f"{where}[{i}]")


def parse_config(data: dict[str, Any]) -> Config:
    """Validate an already parsed TOML document."""
    _reject_non_finite(data)
    signals = data.get("signals")
    if isinstance(signals, dict):
        # msgspec names a bad dict entry "signals[...]"; check each so the error names it.
        for name, entry in signals.items():
            _convert(entry, SignalConfig, f"signals.{name}")
            if str(name).startswith(EVAL_PREFIX) and "direction" not in entry:
                # Listed without a direction: still down, as unlisted ones are.
                signals[name] = {**entry, "direction": _DEFAULT_EVAL.direction}
    spend = data.get("spend")
    prices = spend.get("prices") if isinstance(spend, dict) else None
    if isinstance(prices, dict):   # likewise, named as TOML names it (model names hold dots)
        for model, entry in prices.items():
            _convert(entry, Price, f'spend.prices."{model}"')
    cfg: Config = _convert(data, Config, "")
    _semantic_checks(cfg)
    return cfg


def _env_overrides(data: dict[str, Any]) -> dict[str, Any]:
    """``DETECTOR_KAFKA_BROKERS=…`` overrides ``[kafka] brokers``; likewise any key of
    ``[kafka]`` or ``[metrics]``, and ``DETECTOR_ALERTMANAGER_URLS`` (comma-separated) the
    Alertmanager URLs, so a deployment can keep one file across environments."""
    for section, struct in (("kafka", KafkaConfig), ("metrics", MetricsConfig)):
        defaults = struct()
        for name in struct.__struct_fields__:
            env = os.environ.get(f"DETECTOR_{section.upper()}_{name.upper()}")
            if env is None:
                continue
            value: Any = env
            default = getattr(defaults, name)
            if name == "extra_traces_topics":   # "otlp_spans:otlp_proto,other:otlp_json"
                value = [dict(zip(("topic", "format"), t.strip().rsplit(":", 1), strict=False))
                         for t in env.split(",") if t.strip()]
            elif isinstance(default, int | float) and not isinstance(default, bool):
                kind = type(default)
                try:
                    value = kind(env)
                except ValueError:
                    raise ConfigError(
                        f"{section}.{name}: DETECTOR_{section.upper()}_{name.upper()}="
                        f"{env!r} is not a {'whole ' if kind is int else ''}number"
                    ) from None
            data.setdefault(section, {})[name] = value
    urls = os.environ.get("DETECTOR_ALERTMANAGER_URLS")
    if urls is not None:   # comma-separated, as the compose file and k8s manifests set it
        am = data.setdefault("sinks", {}).setdefault("alertmanager", {})
        am["urls"] = [u.strip() for u in urls.split(",") if u.strip()]
    return data


def load_config(path: str | Path | None, *, env: bool = True) -> Config:
    """Load and validate a config file; ``None`` loads the packaged default."""
    if path is None:
        text = resources.files("detector").joinpath("data/detector.toml").read_text("utf-8")
        where = "default config"
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
        where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML ({e})") from None
    if not data:
        raise ConfigError(f"{where}: the file is empty (no settings; start from "
                          "config/detector.toml)")
    return parse_config(_env_overrides(data) if env else data)


def config_hash(cfg: Config) -> str:
    """A short fingerprint of the settings in effect (after environment overrides), the same
    for equal configs whatever the file's layout or comments. Secrets are left out of it: a
    published hash of a config otherwise known must not let anyone test password guesses.

    >>> config_hash(load_config(None, env=False)) == config_hash(load_config(None, env=False))
    True
    """
    am = cfg.sinks.alertmanager
    blank = msgspec.structs.replace(
        cfg, sinks=msgspec.structs.replace(cfg.sinks, alertmanager=msgspec.structs.replace(
            am, basic_auth_password=None, bearer_token=None)),
        kafka=msgspec.structs.replace(cfg.kafka, sasl_password=None))
    return hashlib.sha256(msgspec.json.encode(blank)).hexdigest()[:16]
