"""Evidence that accumulates, and baselines that adopt the new normal (issue 12)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from baselines.sequential import Cusum, nats_for, to_standard
from detector.config import ConfigError, load_config, parse_config
from detector.core.alert import alert_record
from detector.core.pipeline import Pipeline
from tests.traffic import T0, stream


@pytest.mark.parametrize("mu", [0.007, 0.05, 1.0, 5.0])
def test_false_alarms_are_rarer_than_the_threshold_promises(mu: float) -> None:
    """On clean Poisson counts with a known rate, the run length between false alarms is at
    least e^h windows (Lorden's bound for a CUSUM at h nats). Checked where alarms are common
    enough to count (h = 6: e^h = 403); the default threshold's 15.1 nats is the same
    statistic further out."""
    h = 6.0
    rng = np.random.default_rng(7)
    c = Cusum()
    alarms, n = 0, 200_000
    for k in rng.poisson(mu, n).tolist():
        ups, down = c.peek_counts(float(k), mu, 1.0, h / 2)
        if max(ups) >= h:
            alarms += 1
            c.reset()
        else:
            c.set(ups, down)
    assert n / max(alarms, 1) >= math.exp(h), (alarms, n)


def test_a_rare_rise_builds_evidence_a_single_window_never_shows() -> None:
    """One prompt-injection hit a window where 0.007 are expected is a window score of ~2.5:
    no window alarms, but the evidence reaches the default threshold within a few windows;
    one window alone adds at most half of it."""
    h = nats_for(5.0)
    c = Cusum()
    c.update_counts(50, 0.007, 1.0, cap=h / 2)
    assert c.up <= h / 2 < h
    c = Cusum()
    seen = None
    for w in range(1, 20):
        c.update_counts(1, 0.007, 1.0, cap=h / 2)
        if c.up >= h:
            seen = w
            break
    assert seen is not None and seen <= 5
    assert to_standard(c.up) >= 5.0


def _tokens(rise_from: int, factor: float):
    def effect(minute: int, _cohort: dict[str, str]) -> dict[str, Any]:
        return {"output_tokens": 200.0 * factor} if minute >= rise_from else {}
    return effect


def _alerts(config, lines) -> list[dict[str, Any]]:
    pipe = Pipeline(config)
    out: list[dict[str, Any]] = []
    for line in lines:
        out += map(alert_record, pipe.feed(line))
    return out + [alert_record(a) for a in pipe.finish()]


def _t(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso).timestamp()


def _refusals(rise_from: int, rate: float):
    def effect(minute: int, _cohort: dict[str, str]) -> dict[str, Any]:
        return {"refusal": rate} if minute >= rise_from else {}
    return effect


@pytest.mark.parametrize(("signal", "effect"), [
    ("output_tokens", _tokens(180, 1.6)),      # a new model that answers at more length
    ("refusal_rate", _refusals(180, 0.15)),    # a stricter policy: triple the refusals
])
def test_a_permanent_shift_stops_firing_within_two_hours(config, signal, effect) -> None:
    """A level that persists: every alert on it resolves within two hours of event time (no
    lock-out), and the last hour is quiet: the level is the new normal."""
    alerts = [a for a in _alerts(config, stream(420, per_minute=40, effect=effect, seed=3))
              if a["signal"] == signal]
    assert any(a["status"] == "firing" and a["severity"] == "sev2" for a in alerts)
    ends = {a["id"]: a for a in alerts if a["status"] == "resolved"}
    for a in alerts:
        assert a["id"] in ends, f"{a['id']} still firing at the end: locked out"
        end = ends[a["id"]]
        assert _t(end["ends_at"]) - _t(end["starts_at"]) <= 2 * 3600
    assert max(_t(a["ends_at"]) for a in ends.values()) < T0 + 420 * 60 - 3600


def test_an_anomalous_episode_is_adopted_and_the_alert_says_so(config) -> None:
    """Refusals tripled for good: the counts are too clear for the fast horizon to follow
    unaided (it learns them winsorised), so the episode is adopted after
    adopt_after_windows and the alert resolves saying so, child and parent together."""
    alerts = _alerts(config, stream(420, per_minute=40, effect=_refusals(180, 0.15), seed=3))
    mine = [a for a in alerts if a["signal"] == "refusal_rate"]
    (end,) = [a for a in mine if a["status"] == "resolved"]
    assert end["resolution"] == "baseline_adopted"
    assert "the baseline adopted the new level" in end["summary"]
    took = (_t(end["ends_at"]) - _t(end["starts_at"])) / 60
    assert config.baselines.adopt_after_windows - 5 <= took <= config.baselines.adopt_after_windows
    assert len({a["id"] for a in mine}) == 1     # the parent adopted with its child


def test_a_spike_barely_moves_the_baseline(config) -> None:
    """A one-window ×5 burst of tokens is anomalous once, and the window after it is normal
    again: bounded influence, not a new level."""
    def burst(minute: int, _cohort: dict[str, str]) -> dict[str, Any]:
        return {"output_tokens": 1000.0} if minute == 200 else {}
    alerts = [a for a in _alerts(config, stream(260, per_minute=40, effect=burst, seed=4))
              if a["signal"] == "output_tokens" and a["status"] == "firing"]
    assert len({a["id"] for a in alerts}) == 1
    assert all(a["persistence"] == 1 for a in alerts)


def test_a_forced_rebaseline_starts_afresh_once_and_keeps_the_rest(config) -> None:
    at = T0 + 300 * 60
    from detector.core.timestamps import rfc3339 as iso
    cfg = parse_config({**_doc(), "rebaseline": [
        {"at": iso(at), "match": {"tenant": "acme"}, "signals": ["output_tokens"]}]})
    lines = list(stream(360, per_minute=40, effect=_tokens(300, 1.6), seed=5))
    plain = [a for a in _alerts(config, lines) if a["signal"] == "output_tokens"]
    forced = [a for a in _alerts(cfg, lines) if a["signal"] == "output_tokens"]
    assert plain                      # without it, the deploy fires
    assert forced == [] or all(a["cohort"].get("tenant") != "acme" for a in forced)
    pipe = Pipeline(cfg)
    for line in lines:
        pipe.feed(line)
    fine = pipe.stage2.models[(1, ("acme", "agent", "production"))]
    assert fine.rebased == {"output_tokens": int(at // 60)}
    assert fine.baselines["output_tokens"].n < 60            # restarted at `at`...
    assert fine.baselines["refusal_rate"].n > 300            # ...and nothing else was


def _doc() -> dict[str, Any]:
    import tomllib
    from importlib import resources
    return tomllib.loads(resources.files("detector").joinpath("data/detector.toml")
                         .read_text("utf-8"))


def test_rebaseline_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"rebaseline\[0\]\.at: Invalid RFC3339"):
        parse_config({**_doc(), "rebaseline": [{"at": "yesterday"}]})
    with pytest.raises(ConfigError, match=r"rebaseline\[0\]\.at: .*timezone"):
        parse_config({**_doc(), "rebaseline": [{"at": "2026-01-01T00:00:00"}]})
    with pytest.raises(ConfigError, match=r"rebaseline\[0\]\.match\.colour: not a cohort"):
        parse_config({**_doc(), "rebaseline": [{"at": "2026-01-01T00:00:00Z",
                                                "match": {"colour": "red"}}]})
    assert load_config(None).baselines.adopt_after_windows == 90
