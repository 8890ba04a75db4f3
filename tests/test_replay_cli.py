from __future__ import annotations

import gzip
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.traffic import stream

DETECTOR = [sys.executable, "-m", "detector.cli"]


def _incident(m: int, c: dict) -> dict:
    return {"refusal": 0.3, "unauthorized": 1} if 40 <= m < 44 else {}


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    p = tmp_path / "t.jsonl"
    lines = list(stream(50, effect=_incident))
    lines.insert(100, b"{broken")
    lines.insert(200, orjson.dumps({"ts": 1, "operation": "chat", "prompt": "do not keep me",
                                    "retries": "x"}))
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_replay_writes_alerts_dead_letters_and_a_summary(traces: Path, tmp_path: Path) -> None:
    out, dlq = tmp_path / "a.jsonl", tmp_path / "d.jsonl"
    r = subprocess.run([*DETECTOR, "replay", str(traces), "--alerts-out", str(out),
                        "--dead-letter", str(dlq)], capture_output=True, text=True, check=True)
    alerts = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert {a["signal"] for a in alerts} >= {"refusal_rate", "unauthorized_tool_call"}
    dead = [orjson.loads(x) for x in dlq.read_bytes().splitlines()]
    assert [(d["reason"], d["field"]) for d in dead] == [("not_json", None),
                                                         ("wrong_type", "retries")]
    assert b"do not keep me" not in dlq.read_bytes()
    assert "rejected" in r.stderr and "not_json" in r.stderr and "sev1" in r.stderr
    assert "Traceback" not in r.stderr


def test_replay_is_byte_identical_and_reads_stdin(traces: Path, tmp_path: Path) -> None:
    a = subprocess.run([*DETECTOR, "replay", str(traces), "--quiet"], capture_output=True,
                       check=True).stdout
    b = subprocess.run([*DETECTOR, "replay", "-", "--quiet"], input=traces.read_bytes(),
                       capture_output=True, check=True).stdout
    assert a and a == b


def test_replay_config_changes_what_pages(traces: Path, tmp_path: Path) -> None:
    """An analyst raises a threshold and sees what would no longer have paged."""
    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "strict.toml"
    cfg.write_text((root / "config" / "detector.toml").read_text().replace(
        '[signals.refusal_rate]\n# A collapse of refusals is as alarming as a spike: guardrails '
        'may have been bypassed.\ndirection = "both"\nthreshold = 5.0',
        '[signals.refusal_rate]\ndirection = "both"\nthreshold = 50.0'))
    base = subprocess.run([*DETECTOR, "replay", str(traces), "--quiet"], capture_output=True,
                          check=True).stdout
    strict = subprocess.run([*DETECTOR, "replay", str(traces), "--quiet", "--config", str(cfg)],
                            capture_output=True, check=True).stdout
    signals = lambda out: {orjson.loads(x)["signal"] for x in out.splitlines()}  # noqa: E731
    assert "refusal_rate" in signals(base) and "refusal_rate" not in signals(strict)
    assert "unauthorized_tool_call" in signals(strict)


def test_bad_config_and_missing_file_are_clear(traces: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[windows]\nsize_seconds = 'a minute'\n")
    r = subprocess.run([*DETECTOR, "replay", str(traces), "--config", str(bad)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "windows.size_seconds: Expected `float`" in r.stderr
    r = subprocess.run([*DETECTOR, "replay", str(tmp_path / "nope.jsonl")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "No such file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["replay", "simulate", "evaluate", "check-config", "run",
                                     "demo"])
def test_every_subcommand_has_help(command: str) -> None:
    r = subprocess.run([*DETECTOR, command, "--help"], capture_output=True, text=True,
                       check=True)
    assert r.stdout.startswith("usage: detector") and "--" in r.stdout


def test_kafka_client_chatter_stays_out_of_the_console(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from detector.cli import main
    monkeypatch.setattr(logging.root, "level", logging.INFO)   # as after basicConfig(INFO)
    monkeypatch.setattr(logging.getLogger("aiokafka"), "level", logging.NOTSET)
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)   # also clears cached answers
    cfg = Path(__file__).parents[1] / "config" / "detector.toml"
    assert main(["check-config", str(cfg)]) == 0
    assert logging.getLogger("detector").isEnabledFor(logging.INFO)
    assert not logging.getLogger("aiokafka.consumer").isEnabledFor(logging.INFO)
    assert logging.getLogger("aiokafka.consumer").isEnabledFor(logging.WARNING)


def _replay(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DETECTOR, "replay", *args], capture_output=True, text=stdin is None,
                          input=stdin, check=False)


def test_blank_lines_are_counted_not_rejected(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_bytes(b'{"ts": 1767571200, "operation": "chat"}\n\n  \r\n'
                  b'{"ts": 1767571201, "operation": "chat"}\n\t\n')
    r = _replay(str(p))
    assert r.returncode == 0
    assert re.search(r"lines read +5\n +blank +3\n", r.stderr), r.stderr
    assert re.search(r"rejected +0\n", r.stderr) and re.search(r"events decoded +2\n", r.stderr)


def test_an_over_long_line_is_dead_lettered_without_being_held(tmp_path: Path) -> None:
    """A 50 MB line between good ones: peak RSS stays far below the line's size (measured in
    a parent process of its own), and the dead letter has its length and digest only."""
    good = b'{"ts": 1700000000, "operation": "chat"}\n'
    huge = b'{"ts": 1700000000, "operation": "chat", "x": "' + b"a" * (50 << 20) + b'"}'
    small, big, dlq = tmp_path / "small.jsonl", tmp_path / "big.jsonl", tmp_path / "d.jsonl"
    small.write_bytes(good * 1000)
    big.write_bytes(good * 500 + huge + b"\r\n" + good * 500)
    peak = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); print(" \
           "r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"

    def peak_kib(path: Path) -> int:
        out = subprocess.run([sys.executable, "-c", peak, *DETECTOR, "replay", str(path),
                              "--dead-letter", str(dlq), "--quiet"],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == "0"
        return int(out[1])

    base, with_huge = peak_kib(small), peak_kib(big)
    assert with_huge - base < 16 << 10, (base, with_huge)   # KiB; the line is 50 MiB
    dead = [orjson.loads(x) for x in dlq.read_bytes().splitlines()]
    assert dead == [{"reason": "too_large", "field": None,
                     "detail": f"{len(huge)} bytes > limit 1048576",
                     "payload": {"bytes": len(huge),
                                 "sha256": hashlib.sha256(huge).hexdigest()}}]
    r = _replay(str(big))
    assert re.search(r"events decoded +1,000\n", r.stderr) and "too_large" in r.stderr


def test_gzip_input_is_read_transparently(traces: Path, tmp_path: Path) -> None:
    plain = _replay(str(traces), "--quiet").stdout
    packed = gzip.compress(traces.read_bytes())
    (tmp_path / "t.gz").write_bytes(packed)
    (tmp_path / "t.jsonl").write_bytes(packed)   # no telling name: found by its magic bytes
    assert plain
    assert _replay(str(tmp_path / "t.gz"), "--quiet").stdout == plain
    assert _replay(str(tmp_path / "t.jsonl"), "--quiet").stdout == plain
    assert _replay("-", "--quiet", stdin=packed).stdout == plain.encode()


def test_other_compressed_or_broken_input_is_refused_clearly(traces: Path,
                                                              tmp_path: Path) -> None:
    zst = tmp_path / "t.jsonl.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 100)
    r = _replay(str(zst))
    assert r.returncode == 2 and "zstd-compressed" in r.stderr and "Traceback" not in r.stderr
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(traces.read_bytes())[:5000])
    r = _replay(str(cut))
    assert r.returncode == 2 and "Compressed file ended" in r.stderr
    assert "Traceback" not in r.stderr
    notgz = tmp_path / "plain.gz"
    notgz.write_bytes(traces.read_bytes())
    r = _replay(str(notgz))
    assert r.returncode == 2 and "Not a gzipped file" in r.stderr
def test_scores_out_writes_every_scored_window_with_its_decision(traces: Path,
                                                                 tmp_path: Path) -> None:
    """--scores-out: one line per scored (window, cohort, signal), alert or not, carrying
    every field of the scoring Decision; the anomalous ones are the windows that paged."""
    from detector.core.scoring import Decision

    out, scores = tmp_path / "a.jsonl", tmp_path / "s.jsonl"
    subprocess.run([*DETECTOR, "replay", str(traces), "--alerts-out", str(out),
                    "--scores-out", str(scores), "--quiet"], check=True)
    rows = [orjson.loads(x) for x in scores.read_bytes().splitlines()]
    assert len(rows) > 100
    assert all(set(Decision._fields) <= r.keys() for r in rows)
    assert {tuple(sorted(r["cohort"])) for r in rows} == {("app", "environment"),
                                                          ("app", "environment", "tenant")}
    assert {r["level"] for r in rows} == {0, 1}
    refusal = [r for r in rows if r["signal"] == "refusal_rate" and r["level"] == 1]
    starts = [r["window_start"] for r in refusal]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(r["window_end"] > r["window_start"] and r["window_start"].endswith("Z")
               for r in refusal)
    flagged = {r["window_start"] for r in refusal if r["anomalous"]}
    assert flagged and all(abs(r["score"]) >= r["threshold"] * 0.6 for r in refusal
                           if r["anomalous"])
    assert any(not r["anomalous"] for r in refusal)
    alerts = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    paged = {a["window"]["start"] for a in alerts if a["signal"] == "refusal_rate"
             and a["status"] == "firing"}
    assert paged and paged <= {r["window_start"] for r in rows
                               if r["signal"] == "refusal_rate" and r["anomalous"]}
    assert b"do not keep me" not in scores.read_bytes()
