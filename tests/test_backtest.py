"""`detector backtest`: config variants, the alert diff, the sweep table, the JSON and HTML it
writes, and replay's hooks for it (score_pairs, --kafka's argument checks, lazy imports)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.config import ConfigError, load_config
from detector.core.alert import Alert
from detector.lab.backtest import (
    AlertSpan,
    Segment,
    _Spool,
    apply_set,
    diff,
    parse_set,
    spans,
)
from detector.lab.replay import replay
from detector.lab.tracefile import Oversized

DETECTOR = [sys.executable, "-m", "detector.cli"]
SWEEP = [3.0, 4.0, 5.0, 6.0]


@pytest.fixture
def sim(spike_sim: Path) -> Path:
    return spike_sim


def _alerts(path: Path, config: Any) -> list[Alert]:
    out: list[Alert] = []
    with path.open("rb") as f:
        replay(f, config, out.append)
    return out


def test_apply_set_changes_only_the_key_and_checks_it_as_a_file_would() -> None:
    cfg = load_config(None)
    assert apply_set(cfg, {}) == cfg   # the round trip through builtins loses nothing
    new = apply_set(cfg, {"signals.refusal_rate.threshold": 3.5,
                          "severity[0].min_score": 7.0, "windows.allowed_lateness_seconds": 10})
    assert new.signal("refusal_rate").threshold == 3.5
    assert new.severity[0].min_score == 7.0 and new.windows.allowed_lateness_seconds == 10
    assert new.signal("error_rate") == cfg.signal("error_rate")
    assert new.signal("refusal_rate").direction == cfg.signal("refusal_rate").direction
    # a signal the file does not list gets an entry of its own, defaults elsewhere
    assert apply_set(cfg, {"signals.retry_rate.threshold": 8}).signal("retry_rate").threshold == 8
    for key, value, says in [("signals.refusal_rate.threshold", "high", "signals.refusal_rate"),
                             ("windows.nope", 1, "windows.nope: unknown key"),
                             ("signals.no_such_signal.threshold", 3, "signals.no_such_signal"),
                             ("severity[99].min_score", 1, "severity[99].min_score: no such key")]:
        with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
            apply_set(cfg, {key: value})


def test_parse_set_splits_values_outside_brackets_only() -> None:
    assert parse_set('cohorts.levels=[["app"], ["app", "tenant"]],[["app"]]') == (
        "cohorts.levels", [[["app"], ["app", "tenant"]], [["app"]]])
    assert parse_set(" a.b = x ") == ("a.b", ["x"])
    for bad in ("novalue", "=3", "a="):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_set(bad)


def _span(aid: str, sev: str, start: float, end: float, signal: str = "refusal_rate",
          cohort: dict[str, str] | None = None) -> AlertSpan:
    return AlertSpan(aid, signal, cohort or {"app": "a"}, sev, start, end,
                     (Segment(start, sev),))


def test_diff_new_lost_changed_and_same() -> None:
    base = [_span("b1", "sev2", 0, 600), _span("b2", "sev4", 1000, 1200),
            _span("b3", "sev2", 5000, 5600), _span("b4", "sev3", 0, 600, cohort={"app": "z"})]
    new = [_span("n1", "sev2", 60, 700),            # same incident, same severity
           _span("n2", "sev2", 1100, 1500),         # b2 paged higher
           _span("n3", "sev4", 9000, 9100),         # new (b3 ended before it)
           _span("n4", "sev3", 0, 600, signal="error_rate", cohort={"app": "z"})]  # new
    d = diff(base, new)
    assert d.same == 1
    assert [(c.base.id, c.base.severity, c.new.id, c.new.severity) for c in d.changed] == [
        ("b2", "sev4", "n2", "sev2")]
    assert [a.id for a in d.new] == ["n3", "n4"]
    assert [a.id for a in d.lost] == ["b4", "b3"]  # by start


def test_spans_keep_each_severity_segment_and_the_resolution() -> None:
    def rec(status: str, sev: str, start: str, end: str) -> dict[str, Any]:
        return {"id": "a1", "status": status, "severity": sev, "signal": "refusal_rate",
                "cohort": {"app": "a"}, "starts_at": "2026-01-05T01:00:00Z",
                "ends_at": end if status == "resolved" else None,
                "window": {"start": start, "end": end}, "summary": f"[{sev}] s",
                "suspected_change": {"field": "prompt_version", "baseline": "v1", "now": "v2"}}

    recs = [rec("firing", "sev4", "2026-01-05T01:00:00Z", "2026-01-05T01:01:00Z"),
            rec("firing", "sev2", "2026-01-05T01:02:00Z", "2026-01-05T01:03:00Z"),
            rec("resolved", "sev2", "2026-01-05T01:09:00Z", "2026-01-05T01:10:00Z")]
    [a] = spans(recs, data_end=1767578400.0)
    t0 = 1767574800.0
    assert a.severity == "sev2" and a.summary == "[sev2] s"
    assert a.segments == (Segment(t0, "sev4"), Segment(t0 + 120, "sev2"))
    assert (a.start, a.end) == (t0, t0 + 600)
    [open_] = spans(recs[:2], data_end=t0 + 3600)
    assert open_.end == t0 + 3600   # never resolved: to the end of the data


def test_spool_gives_back_every_message_and_never_an_oversized_ones_bytes() -> None:
    msgs: list[bytes | Oversized] = [b'{"a":1}', b"line\nwith newline", b"",
                                     Oversized(5_000_000, "ab" * 32), b"\x00\xff"]
    spool = _Spool(msgs)
    try:
        assert list(spool.read()) == msgs
        assert list(spool.read()) == msgs   # read again: the point of it
    finally:
        spool.close()


def test_replay_score_pairs_keeps_only_the_pairs_named(sim: Path) -> None:
    cfg = load_config(None)
    every: list[dict[str, Any]] = []
    some: list[dict[str, Any]] = []
    lines = (sim / "traces.jsonl").read_bytes().splitlines()
    replay(iter(lines), cfg, lambda a: None, scores=every.append)
    pair = (1, ("t01", "support-agent", "production"), "refusal_rate")
    replay(iter(lines), cfg, lambda a: None, scores=some.append, score_pairs={pair})
    want = [r for r in every if r["level"] == 1 and r["signal"] == "refusal_rate"
            and tuple(r["cohort"].values()) == pair[1]]
    assert len(want) > 30 and some == want


def test_backtest_two_configs_labels_and_a_sweep(sim: Path, tmp_path: Path) -> None:
    low = tmp_path / "low.toml"
    text = (Path(__file__).parents[1] / "config" / "detector.toml").read_text()
    assert "[signals.error_rate]\nrunbook_url" in text   # no threshold of its own there
    low.write_text(text.replace("[signals.error_rate]\n",
                                "[signals.error_rate]\nthreshold = 2.0\n"))
    html, js = tmp_path / "r.html", tmp_path / "r.json"
    r = subprocess.run([*DETECTOR, "backtest", str(sim / "traces.jsonl"), "--compare", str(low),
                        "--labels", str(sim / "labels.json"), "--out", str(html),
                        "--json", str(js), "--set",
                        "signals.refusal_rate.threshold=" + ",".join(map(str, SWEEP))],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = orjson.loads(js.read_bytes())
    base, other = report["configs"]
    # the base config's alerts are replay's, one per id
    cfg = load_config(None)
    ids = {a.id for a in _alerts(sim / "traces.jsonl", cfg)}
    assert {a["id"] for a in base["alerts"]} == ids
    assert sum(base["alerts_by_severity"].values()) == len(ids)
    assert base["evaluation"]["summary"]["detected"] == base["evaluation"]["summary"]["incidents"]
    # the diff accounts for every alert of both
    d = report["diff"]
    assert len(other["alerts"]) == len(base["alerts"]) + len(d["new"]) - len(d["lost"])
    assert len(base["alerts"]) == d["same"] + len(d["changed"]) + len(d["lost"])
    assert d["new"] and all(a["signal"] == "error_rate" for a in d["new"]), d
    # the sweep: one row per value, in order; the default's value gives the base's counts
    assert [row["setting"] for row in report["sweep"]] == [
        {"signals.refusal_rate.threshold": v} for v in SWEEP]
    default = cfg.signal("refusal_rate").threshold
    [same] = [row for row in report["sweep"]
              if row["setting"]["signals.refusal_rate.threshold"] == default]
    assert same["by_severity"] == base["alerts_by_severity"]
    assert all(row["recall"] is not None for row in report["sweep"])
    table = r.stdout[r.stdout.index("signals.refusal_rate.threshold"):].splitlines()
    assert [line.split()[0] for line in table[1:5]] == [str(v) for v in SWEEP]
    # the HTML: self-contained, one plot per windowed alert of each config
    from plotly.offline import get_plotlyjs

    page = html.read_text()
    assert page.count(get_plotlyjs()) == 1   # inlined once; nothing else is fetched
    page = page.replace(get_plotlyjs(), "")
    assert "<script src" not in page and "http" not in page.replace("https://runbooks", "")
    windowed = sum(a["signal"] not in ("secret_leak", "unauthorized_tool_call",
                                       "unapproved_side_effect") for c in (base, other)
                   for a in c["alerts"])
    assert windowed > 0 and page.count('<div id="plot-') == windowed
    assert "What " in page and "pages differently" in page


@pytest.mark.parametrize(("argv", "says"), [
    (["--set", "nonsense"], "KEY=VALUE"),
    (["--set", "windows.nope=1,2"], "windows.nope: unknown key"),
    (["--kafka"], "--kafka needs --since"),
])
def test_backtest_refuses_bad_arguments_clearly(sim: Path, tmp_path: Path, argv: list[str],
                                                says: str) -> None:
    r = subprocess.run([*DETECTOR, "backtest", str(sim / "traces.jsonl"), "--out",
                        str(tmp_path / "r.html"), *argv], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(("argv", "says"), [
    ([], "give a file, '-' for stdin, or --kafka"),
    (["--kafka", "--since", "2026-01-05T00:00:00Z", "--until", "2026-01-04T00:00:00Z"],
     "is not after --since"),
    (["--kafka", "--since", "monday"], "'monday' is not an ISO 8601 time"),
])
def test_replay_range_arguments_are_checked(argv: list[str], says: str) -> None:
    r = subprocess.run([*DETECTOR, "replay", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_replay_imports_neither_plotting_nor_kafka_python(sim: Path) -> None:
    code = ("import sys; from detector.cli import main; "
            f"main(['replay', {str(sim / 'traces.jsonl')!r}, '--quiet', '--alerts-out', "
            "'/dev/null']); print(sorted(m for m in ('plotly', 'kafka') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
