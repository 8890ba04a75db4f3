"""NAB (the Numenta Anomaly Benchmark) through the detector's public interface.

    python bench/nab.py [--data DIR] [--labels FILE] [--out DIR] [--jobs 2]
                        [--nab PATH_TO_NAB --nab-python PATH]

Each of NAB's 58 series goes through `detector replay` as trace events: row i is one event at
``EPOCH + 60 i`` carrying the row's value as ``latency_ms``, so 60 s windows are exactly the
rows. Latency cannot be negative (the trace-event contract says so), so a negative value is sent
as 0 (only art_daily_flatmiddle has any; the count is printed). The config is the packaged
default except for the mapping: only ``latency_ms`` enabled, direction "both", min_count 1.
No per-file tuning. From ``--scores-out`` it writes NAB's result files for two detectors:

- ``aimdraw``: the row's |score| mapped monotonically into [0, 1) as x / (1 + x), x = |z| / 5;
- ``aimddecide``: 1 where the project judged the window anomalous, else 0;
- ``aimdalert``: 1 where the project raised or escalated an alert (what it tells a person).

Rows the project did not score (warm-up) get 0. With ``--nab`` (NAB's tree, see
shared/nab/README.md) the files go to ``$NAB/results`` and NAB's scorer is run on both and on
windowedGaussian in one run; its final scores (standard / low FP / low FN) are printed. Per file,
flagged rows inside and outside NAB's labelled windows are printed too.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "nab"   # shared/ of the steering repo, beside the clone
EPOCH = 1_704_067_200          # 2024-01-01T00:00:00Z, on a window boundary
SIGNAL = "latency_ms"
DETECTORS = ("aimdraw", "aimddecide", "aimdalert")
TIMEOUT_S = 900                # per file; the largest (22,695 rows) takes well under that
FINAL = re.compile(r"Final score for '(\w+)' detector on '(\w+)' profile = (-?[\d.]+)")
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


class FileResult(NamedTuple):
    name: str                  # e.g. realKnownCause/nyc_taxi.csv
    timestamps: list[str]
    values: list[str]          # as written in the data file
    raw: list[float]           # per row, [0, 1)
    decide: list[int]          # per row, 0 or 1
    alert: list[int]           # per row, 1 where an alert starts or escalates
    clamped: int               # negative values sent as 0
    scored: int                # rows the project scored (past warm-up)


def _toml(v: Any) -> str:
    """A JSON-like value as a TOML inline value (quoted keys and strings are JSON-compatible)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


def nab_config() -> str:
    """The packaged default config with only the mapping changed, as TOML text."""
    from detector.config import load_config
    from detector.core.signals import Layout

    data = tomllib.loads((ROOT / "config" / "detector.toml").read_text("utf-8"))
    cfg = load_config(None)
    signals = data.setdefault("signals", {})
    for s in Layout(tuple(cfg.input.safety_labels)).signals:
        signals.setdefault(s.name, {})["enabled"] = s.name == SIGNAL
    signals[SIGNAL].update(direction="both", min_count=1)
    return "\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in data.items()) + "\n"


def read_series(path: Path) -> tuple[list[str], list[str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["timestamp"] for r in rows], [r["value"] for r in rows]


def run_file(data: Path, name: str, config: Path, work: Path) -> FileResult:
    ts, values = read_series(data / name)
    stem = name.replace("/", "__")
    events, scores = work / f"{stem}.jsonl", work / f"{stem}.scores.jsonl"
    alerts = work / f"{stem}.alerts.jsonl"
    clamped = 0
    with events.open("wb") as f:
        for i, v in enumerate(values):
            x = float(v)
            if x < 0:
                clamped += 1
                x = 0.0
            f.write(orjson.dumps({"ts": EPOCH + 60 * i, "operation": "chat", "app": "nab",
                                  "environment": "bench", "tenant": "nab",
                                  SIGNAL: x}) + b"\n")
    subprocess.run([sys.executable, "-m", "detector.cli", "replay", str(events), "--config",
                    str(config), "--scores-out", str(scores), "--alerts-out", str(alerts),
                    "--quiet"], check=True, timeout=TIMEOUT_S, cwd=ROOT)
    raw = [0.0] * len(values)
    decide = [0] * len(values)
    scored = 0
    for line in scores.read_bytes().splitlines():
        r = orjson.loads(line)
        if r["level"] != 0 or r["signal"] != SIGNAL:
            continue
        i = (int(datetime.fromisoformat(r["window_start"]).timestamp()) - EPOCH) // 60
        x = abs(r["score"]) / 5.0
        raw[i] = x / (1.0 + x)
        decide[i] = int(r["anomalous"])
        scored += 1
    alert = [0] * len(values)
    for line in alerts.read_bytes().splitlines():
        a = orjson.loads(line)
        if a["status"] == "firing":   # either level: the one that stands for the incident
            i = (int(datetime.fromisoformat(a["window"]["start"]).timestamp()) - EPOCH) // 60
            alert[i] = 1
    for f in (events, scores, alerts):
        f.unlink()
    return FileResult(name, ts, values, raw, decide, alert, clamped, scored)


def write_results(results: Path, r: FileResult) -> None:
    category, fname = r.name.split("/")
    for det, col in zip(DETECTORS, (r.raw, r.decide, r.alert), strict=True):
        out = results / det / category / f"{det}_{fname}"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["timestamp", "value", "anomaly_score", "label"])
            w.writerows([t, v, s, 0] for t, v, s in zip(r.timestamps, r.values, col,
                                                          strict=True))


def label_counts(r: FileResult, windows: list[list[str]]) -> tuple[int, int, int]:
    """(flagged rows inside labelled windows, flagged rows outside, windows with a flag)."""
    spans = [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in windows]
    inside = outside = 0
    hit = [False] * len(spans)
    for t, d in zip(r.timestamps, r.decide, strict=True):
        if not d:
            continue
        when = datetime.fromisoformat(t)
        ins = [j for j, (a, b) in enumerate(spans) if a <= when <= b]
        for j in ins:
            hit[j] = True
        inside += bool(ins)
        outside += not ins
    return inside, outside, sum(hit)


def run_nab(nab: Path, python: str) -> dict[tuple[str, str], float]:
    dets = ",".join((*DETECTORS, "windowedGaussian"))
    p = subprocess.run([python, "run.py", "-d", dets, "--optimize", "--score", "--normalize",
                        "--skipConfirmation"], cwd=nab, capture_output=True, text=True,
                       timeout=3600, check=False)
    got = {(m[1], m[2]): float(m[3]) for m in FINAL.finditer(p.stdout)}
    if p.returncode or not got:
        sys.exit(f"NAB's run.py failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--labels", type=Path, default=SHARED / "labels" / "combined_windows.json")
    ap.add_argument("--out", type=Path, help="results folder (default: $NAB/results, "
                    "else a temporary folder)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--nab", type=Path, help="NAB's tree: score the results with its run.py")
    ap.add_argument("--nab-python", default="python3", help="the Python that runs NAB")
    args = ap.parse_args()
    labels: dict[str, list[list[str]]] = json.loads(args.labels.read_text())
    names = sorted(labels)
    with tempfile.TemporaryDirectory(prefix="nab-") as tmp:
        work = Path(tmp)
        results = args.out or (args.nab / "results" if args.nab else work / "results")
        config = work / "nab.toml"
        config.write_text(nab_config())
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda n: run_file(args.data, n, config, work), names))
        for r in done:
            write_results(results, r)
    print(f"{'file':<58}{'rows':>7}{'scored':>8}{'in':>6}{'out':>6}{'windows':>9}")
    totals = [0, 0, 0, 0, 0]
    for r in done:
        inside, outside, hit = label_counts(r, labels[r.name])
        print(f"{r.name:<58}{len(r.values):>7}{r.scored:>8}{inside:>6}{outside:>6}"
              f"{hit:>5}/{len(labels[r.name])}")
        for j, x in enumerate((inside, outside, hit, len(labels[r.name]), r.clamped)):
            totals[j] += x
    print(f"flagged rows in labelled windows {totals[0]}, outside {totals[1]}; labelled windows "
          f"with a flag {totals[2]}/{totals[3]}; negative values sent as 0: {totals[4]}")
    print(f"results: {results}")
    if args.nab:
        got = run_nab(args.nab, args.nab_python)
        print(f"{'NAB score':<20}" + "".join(f"{p:>20}" for p in PROFILES))
        for det in (*DETECTORS, "windowedGaussian"):
            print(f"{det:<20}" + "".join(f"{got.get((det, p), float('nan')):>20.2f}"
                                         for p in PROFILES))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
