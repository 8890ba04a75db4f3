"""Links on every page: ``[links]`` templates become the alert's ``dashboard_url`` and
``generator_url`` (filled from its cohort, percent-encoded), its Alertmanager annotation and
``generatorURL``; unset, the alert is as before."""

from __future__ import annotations

import tomllib
import urllib.parse
from importlib import resources
from typing import Any

import msgspec
import orjson
import pytest

from detector.config import Config, ConfigError, Links, load_config, parse_config
from detector.core.alert import Alert, encode_alert
from detector.core.links import dashboard_url
from detector.core.pipeline import Pipeline
from detector.core.reload import plan_reload
from detector.sinks.alertmanager import AlertmanagerSink, Tuning, to_postable

try:  # tests/ is on sys.path under pytest's default import mode; else tests is a package
    import services as svc
except ImportError:  # pragma: no cover
    from tests import services as svc

T0 = 1_767_571_200.0
DASH = ("https://grafana.example/d/ai/cohort?var-tenant=${tenant}&var-app=${app}"
        "&var-model=${model}&from=${from_ms}&to=${to_ms}")
GEN = "https://grafana.example/d/ai/signal?var-signal=$signal&alert=${id}&s=${status}"


@pytest.mark.parametrize("value", ["acme corp", "a/b?c=d&e#f", "100%", "é ü 漢字 🙂",
                                   "x\ny\r\t", "$tenant", "~._-", ""])
def test_a_cohort_value_is_percent_encoded_whole(value: str) -> None:
    links = Links(dashboard_url="https://g.example/d?var-tenant=${tenant}&to=1")
    assert (dashboard_url(links, {"tenant": value}, T0, T0)
            == "https://g.example/d?var-tenant=" + urllib.parse.quote(value, safe="") + "&to=1")


def _with_links(**links: Any) -> dict[str, Any]:
    data = tomllib.loads(resources.files("detector").joinpath("data/detector.toml")
                        .read_text("utf-8"))
    data["links"] = links
    return data


@pytest.mark.parametrize(("links", "error"), [
    ({"dashboard_url": "https://g/d?x=${prompt_text}"},
     "links.dashboard_url: unknown template field 'prompt_text'"),
    ({"generator_url": "ftp://g/d"}, "links.generator_url: 'ftp://g/d' is not an http(s) URL"),
    ({"dashboard_url": "https://${tenant}.grafana/d"}, "with a fixed host"),
    ({"dashboard_url": "https://g/d?cost=$"}, "is not a valid template"),
    ({"generator_url": 3}, "links.generator_url: Expected `str | null`, got `int`"),
])
def test_bad_link_templates_are_refused_naming_the_key(links: dict[str, Any],
                                                       error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(")", r"\)")
                       .replace("|", r"\|")):
        parse_config(_with_links(**links))


def _events(tenant: str) -> list[bytes]:
    chat = [orjson.dumps({"ts": T0 + m * 60 + i * 6.0, "operation": "chat", "tenant": tenant,
                          "app": "support-agent", "environment": "production"})
            for m in (0, *range(2, 14)) for i in range(10)]
    hit = orjson.dumps({"ts": T0 + 95.0, "operation": "execute_tool", "tenant": tenant,
                        "app": "support-agent", "environment": "production",
                        "trace_id": "ab" * 16, "tool_name": "send_email",
                        "tool_authorized": False, "tool_side_effect": "external"})
    return sorted([*chat, hit], key=lambda x: orjson.loads(x)["ts"])


def _alerts(cfg: Config, tenant: str) -> list[Alert]:
    p = Pipeline(cfg)
    return [a for a in p.feed_many(_events(tenant)) + p.finish()
            if a.signal == "unauthorized_tool_call"]


def test_alerts_carry_links_filled_from_their_cohort() -> None:
    cfg = parse_config(_with_links(dashboard_url=DASH, generator_url=GEN))
    fired, resolved = _alerts(cfg, "acme & co")
    assert (fired.status, resolved.status) == ("firing", "resolved")
    start_ms = int(fired.starts_at.timestamp() * 1000)
    assert fired.dashboard_url == (
        "https://grafana.example/d/ai/cohort?var-tenant=acme%20%26%20co&var-app=support-agent"
        f"&var-model=&from={start_ms - 3_600_000}&to={start_ms + 3_600_000}")
    assert fired.generator_url == ("https://grafana.example/d/ai/signal?var-signal="
                                   f"unauthorized_tool_call&alert={fired.id}&s=firing")
    assert resolved.generator_url is not None and resolved.generator_url.endswith("&s=resolved")
    # On the alert's JSON, and into its Alertmanager annotations.
    assert orjson.loads(encode_alert(fired))["dashboard_url"] == fired.dashboard_url
    assert to_postable(fired, ["tenant"])[1]["dashboard_url"] == fired.dashboard_url


def test_without_links_the_alert_is_as_before() -> None:
    for a in _alerts(load_config(None, env=False), "acme"):
        rec = orjson.loads(encode_alert(a))
        assert "dashboard_url" not in rec and "generator_url" not in rec
        assert "dashboard_url" not in to_postable(a, ["tenant"])[1]


def test_links_apply_on_reload() -> None:
    old = load_config(None, env=False)
    new = msgspec.structs.replace(old, links=Links(dashboard_url=DASH))
    plan = plan_reload(old, new)
    assert plan.ok and plan.changed == ("links.dashboard_url",)


def test_alertmanager_gets_the_alerts_back_link_else_the_static_one() -> None:
    with svc.RecordingServer() as server:
        cfg = parse_config({"severity": [{"severity": "sev4"}], "sinks": {"alertmanager": {
            "urls": [server.url], "generator_url": "https://static.example/"}}})
        with AlertmanagerSink(cfg.sinks.alertmanager, tuning=Tuning(poll_s=0.05)) as sink:
            sink.emit(svc.sample_alert(id="a-1", generator_url="https://g.example/a-1",
                                       dashboard_url="https://g.example/d?t=acme"))
            sink.emit(svc.sample_alert(id="a-2", severity="sev2"))
            assert sink.flush(15.0)
        sent = [p for body in server.bodies for p in body]
    by_sev = {p["labels"]["sev"]: p for p in sent}
    assert by_sev["sev1"]["generatorURL"] == "https://g.example/a-1"
    assert by_sev["sev1"]["annotations"]["dashboard_url"] == "https://g.example/d?t=acme"
    assert by_sev["sev2"]["generatorURL"] == "https://static.example/"
    assert "dashboard_url" not in by_sev["sev2"]["annotations"]
