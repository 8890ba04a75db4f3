"""The typed alert: it matches the alert contract, and its JSON is the detector's as before."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import orjson
import pytest

from detector.config import Config
from detector.core.alert import Alert, decode_alert, encode_alert
from detector.core.lifecycle import Lifecycle
from detector.core.scoring import Decision
from tests.conftest import CONTRACTS

SCHEMA = json.loads((CONTRACTS / "alert.schema.json").read_text())
FIN = ("acme", "agent", "production")


def _lifecycle_alerts(config: Config) -> list[Alert]:
    """Every kind of emission the lifecycle makes: a hard-rule firing and its resolution,
    a baseline firing with a suspected change and child cohorts, and an adoption."""
    life = Lifecycle(config)
    fin = len(config.cohorts.levels) - 1
    out: list[Alert] = []
    a = life.on_hit("unauthorized_tool_call", fin, FIN, 600.25, "a" * 32,
                    {"field": "prompt_version", "baseline": None, "now": "v5"})
    assert a is not None
    out.append(a)
    d = Decision("refusal_rate", 7.5, 0.4, 0.05, 5.0, True, 812)
    b = life.on_anomaly(0, ("agent", "production"), d, 3, (660.0, 720.0), ["b" * 32],
                        {"field": "model_version", "baseline": "m1", "now": "m2"}, 4)
    assert b is not None
    out.append(b)
    for w in range(12, 30):
        out += life.close_window(life.touch_hits(w * 60.0))
    c = life.on_anomaly(0, ("agent", "production"), d, 1, (1800.0, 1860.0), [], None, 0)
    assert c is not None
    out.append(c)
    adopted = life.adopted(("refusal_rate", 0, ("agent", "production")), 1920.0)
    assert adopted is not None
    out.append(adopted)
    return out


def test_every_emission_follows_the_contract_and_round_trips(config, alert_validator) -> None:
    alerts = _lifecycle_alerts(config)
    assert {(a.signal, a.status) for a in alerts} == {
        ("unauthorized_tool_call", "firing"), ("unauthorized_tool_call", "resolved"),
        ("refusal_rate", "firing"), ("refusal_rate", "resolved")}
    for a in alerts:
        data = encode_alert(a)
        alert_validator.validate(json.loads(data))
        assert decode_alert(data) == a


def test_the_struct_declares_the_contract_fields_in_its_order() -> None:
    """The contract's properties, in order, then the detector's additions; the contract's
    required fields have no default (always written)."""
    fields = {f.name: f for f in msgspec.structs.fields(Alert)}
    props = list(SCHEMA["properties"])
    assert list(fields)[:len(props)] == props
    assert list(fields)[len(props):] == ["persistence", "grouped_cohorts", "resolution",
                                         "also_suspected", "suspected_change_reason",
                                         "containment", "dashboard_url", "generator_url",
                                         "compared"]
    for name in SCHEMA["required"]:
        assert fields[name].required, name
    nested = {"window": ["start", "end", "events"],
              "suspected_change": ["field", "baseline", "now"], "evidence": ["trace_ids"]}
    for name, keys in nested.items():
        assert list(SCHEMA["properties"][name]["properties"]) == keys
    assert (msgspec.json.schema(Alert)["$defs"]["Window"]["required"]
            == nested["window"])


def test_json_is_byte_for_byte_the_dict_encoding_it_replaces(config) -> None:
    """What lifecycle wrote before the struct: orjson over a dict in this order, numbers as
    orjson writes them (``1e+17``; msgspec would write ``1e17``), optional fields left out
    at their defaults and ``null`` where the contract allows it."""
    a = msgspec.structs.replace(_lifecycle_alerts(config)[1], observed=1e17, expected=None)
    rec = {f: getattr(a, f) for f in a.__struct_fields__}
    rec["starts_at"] = a.starts_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    rec.update(window=msgspec.to_builtins(a.window),
               suspected_change=msgspec.to_builtins(a.suspected_change),
               evidence=msgspec.to_builtins(a.evidence))
    for k in ("resolution", "also_suspected", "suspected_change_reason", "containment",
              "dashboard_url", "generator_url", "compared"):
        del rec[k]
    assert encode_alert(a) == orjson.dumps(rec)
    assert b'"observed":1e+17,"expected":null' in encode_alert(a)
    plain = msgspec.structs.replace(a, grouped_cohorts=0)
    assert b"grouped_cohorts" not in encode_alert(plain)
    assert b'"resolution":"clean_windows"' in encode_alert(
        msgspec.structs.replace(plain, status="resolved", resolution="clean_windows",
                                ends_at=datetime(2026, 1, 5, tzinfo=UTC)))
    assert b"containment" not in encode_alert(plain)


def test_a_canary_gap_names_its_compared_cohort_and_validates(config, alert_validator) -> None:
    """``compared`` (a canary gap's signal and production cohort) is written last, omitted
    elsewhere, reads back, and the alert is still valid under the shared contract."""
    from detector.core.alert import Compared

    plain = _lifecycle_alerts(config)[0]
    assert b"compared" not in encode_alert(plain)
    a = msgspec.structs.replace(plain, signal="canary_gap", compared=Compared(
        signal="refusal_rate", cohort={"app": "a", "environment": "production"}))
    data = encode_alert(a)
    assert data.endswith(b',"compared":{"signal":"refusal_rate","cohort":{"app":"a",'
                         b'"environment":"production"}}}')
    assert decode_alert(data) == a
    alert_validator.validate(orjson.loads(data))


def test_containment_is_written_last_and_validates(config, alert_validator) -> None:
    """A containment record on an alert: written after the detector's other additions, as
    docs/contracts.md shows it, and still a valid alert under the shared contract."""
    from detector.core.alert import ContainmentResult

    a = msgspec.structs.replace(_lifecycle_alerts(config)[0], containment=[
        ContainmentResult(action="disable_tools", status="ok", at="2026-01-05T00:00:00.000Z")])
    data = encode_alert(a)
    assert data.endswith(b',"containment":[{"action":"disable_tools","status":"ok",'
                         b'"at":"2026-01-05T00:00:00.000Z"}]}')
    alert_validator.validate(json.loads(data))
    assert decode_alert(data) == a


def test_times_are_datetimes_written_with_milliseconds(config) -> None:
    hit = _lifecycle_alerts(config)[0]
    assert hit.starts_at == datetime(1970, 1, 1, 0, 10, 0, 250000, tzinfo=UTC)
    assert json.loads(encode_alert(hit))["starts_at"] == "1970-01-01T00:10:00.250Z"
    assert hit.window.start == "1970-01-01T00:10:00.250Z"


def test_a_malformed_alert_document_is_a_clear_error() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"starts_at"):
        decode_alert(b'{"id": "a", "status": "firing", "starts_at": "yesterday"}')
