"""Config hot reload on a running `detector run` worker, on the real broker: the worker warms up
at a refusal-rate threshold nothing crosses, takes the default threshold on SIGHUP, refuses a
change of window size (running on as it was), then pages a refusal incident at the new
threshold at once: the baselines it learned before the reload were kept (a fresh state could
not tell the incident from normal, as the offline replays below show)."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import pytest
from harness import AlertReader, WorkerProc, produce_lines, replay, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families

from detector.lab.broker import Tansu, free_port
from tests.traffic import chats

pytestmark = pytest.mark.integration

T0 = 1_767_571_200.0
ENV = {"DETECTOR_KAFKA_SESSION_TIMEOUT_SECONDS": "6"}



def _edit(text: str, threshold: str, window: str = "60") -> str:
    """``text`` with the refusal-rate threshold and the window size set."""
    text, n1 = re.subn(r"(\[signals\.refusal_rate\][^\[]*?\nthreshold = )\S+",
                       rf"\g<1>{threshold}", text, count=1)
    text, n2 = re.subn(r"(?m)^size_seconds = \S+", f"size_seconds = {window}", text, count=1)
    assert n1 == n2 == 1
    return text


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _reloads(port: int, result: str) -> float:
    return _metrics(port).get(("detector_config_reloads_total", (("result", result),)), -1.0)


def _config_hash(port: int) -> str | None:
    got = [dict(labels)["hash"] for (name, labels) in _metrics(port)
           if name == "detector_config_info"]
    return got[0] if len(got) == 1 else None


def _consumed(w: WorkerProc) -> int:
    ev = w.events("stage1_progress")
    return int(ev[-1]["events"]) if ev else 0


def test_sighup_applies_a_threshold_without_a_warm_up_and_refuses_a_window_change(
        broker: Tansu, names: dict[str, str], tmp_path: Path) -> None:
    base = write_config(tmp_path / "base.toml", brokers=broker.bootstrap, partitions=1,
                        idle_partition_timeout_seconds=2, **names).read_text("utf-8")
    high, low = tmp_path / "high.toml", tmp_path / "low.toml"
    high.write_text(_edit(base, "1000.0"), "utf-8")
    low.write_text(_edit(base, "5.0"), "utf-8")
    warm = chats(T0, 25)                                       # past the 20 warm-up windows
    incident = chats(T0 + 25 * 60, 8, refusing=range(2, 5))

    def refusals(alerts: list[dict]) -> list[dict]:
        return [a for a in alerts if a["signal"] == "refusal_rate"]

    # What makes the stream's result mean something: the incident pages at the low threshold
    # after the warm-up, not at the high one, and not without the warm-up.
    expected = refusals(replay(low, warm + incident))
    assert expected
    assert not refusals(replay(high, warm + incident))
    assert not refusals(replay(low, incident))

    live = tmp_path / "detector.toml"
    live.write_text(high.read_text("utf-8"), "utf-8")
    port = free_port()
    w = WorkerProc(live, tmp_path / "w.log",
                   {**ENV, "DETECTOR_METRICS_PORT": str(port),
                    "DETECTOR_METRICS_HOST": "127.0.0.1"})
    reader = AlertReader(broker.bootstrap, names["alerts_topic"])
    try:
        wait_until(lambda: w.events("stage1_assigned") or not w.alive(), 90,
                   "the worker's stage-1 consumer to join its group")
        wait_until(lambda: w.events("config_reload_ready") or not w.alive(), 30,
                   "the worker to listen for SIGHUP")
        assert w.alive(), w.log()[-3000:]
        started = _config_hash(port)
        assert started == w.events("config_reload_ready")[0]["hash"]

        produce_lines(broker.bootstrap, names["traces_topic"], warm, partitions=1)
        wait_until(lambda: _consumed(w) >= len(warm), 60, "the warm-up to be consumed")
        wait_until(lambda: '"stage2_partition_loaded"' in w.log(), 30, "stage 2 to start")

        # The default threshold, on SIGHUP.
        live.write_text(low.read_text("utf-8"), "utf-8")
        w.proc.send_signal(signal.SIGHUP)
        (applied,) = wait_until(lambda: w.events("config_reload_applied"), 30,
                                "the reload to be applied")
        assert applied["changed"] == ["signals.refusal_rate.threshold"]
        assert applied["trigger"] == "sighup"
        assert _reloads(port, "applied") == 1.0
        reloaded = _config_hash(port)
        assert reloaded == applied["hash"] != started

        # A window size needs a restart: refused whole (its threshold too), named, counted.
        live.write_text(_edit(base, "1000.0", window="30"), "utf-8")
        w.proc.send_signal(signal.SIGHUP)
        (refused,) = wait_until(lambda: w.events("config_reload_refused"), 30,
                                "the window change to be refused")
        assert refused["restart_keys"] == ["windows.size_seconds"]
        assert "windows.size_seconds cannot change on a running worker" in refused["message"]
        assert _reloads(port, "refused") == 1.0
        assert _config_hash(port) == reloaded
        assert w.alive()

        # The incident pages at once, at the applied threshold, as the replay at it pages.
        produce_lines(broker.bootstrap, names["traces_topic"], incident, partitions=1)
        got = wait_until(lambda: refusals(reader.poll()), 60,
                         "the refusal alert at the reloaded threshold")
        assert (got[0]["id"], got[0]["severity"], got[0]["threshold"], got[0]["window"]) == (
            expected[0]["id"], expected[0]["severity"], 5.0, expected[0]["window"])
        assert w.alive()
        assert _reloads(port, "applied") == 1.0 and _reloads(port, "invalid") == 0.0
        assert "Traceback" not in w.log()
    finally:
        reader.close()
        w.stop()
