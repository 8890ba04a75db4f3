"""At what rollout share a harmful canary is found, with and without attribution (issue 19).

    python bench/attribution.py [--shares 0.02,0.05,0.1,0.2,0.5] [--seeds 1,2] [--hours 2.5]

For each share and seed: ``detector simulate`` of the ``canary_version`` scenario with that
share of the app's production traffic on the new model version (its calls refuse six times as
often, at least a quarter of the time), replayed at the default config and with
``alerting.attribution_detects = false``. Prints, per share, the incidents detected each way,
the worst severity, and whether the alerts named the canary's version (every alert of it).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from detector.config import load_config
from detector.core.alert import alert_record
from detector.lab import scenarios
from detector.lab.evaluate import evaluate
from detector.lab.replay import replay
from detector.lab.simulate import simulate
from detector.lab.tracefile import read_lines


def run(share: float, seed: int, hours: float, work: Path) -> list[dict[str, Any]]:
    base = scenarios.SCENARIOS["canary_version"]
    scenarios.SCENARIOS["canary_version"] = dataclasses.replace(base, share=share)
    try:
        out = work / f"s{share}-{seed}"
        simulate(out, hours=hours, seed=seed, scenarios=["canary_version"])
    finally:
        scenarios.SCENARIOS["canary_version"] = base
    labels = msgspec.json.decode((out / "labels.json").read_bytes())
    cfg = load_config(None, env=False)
    off = msgspec.structs.replace(cfg, alerting=msgspec.structs.replace(
        cfg.alerting, attribution_detects=False))
    rows = []
    for c in (cfg, off):
        alerts: list[dict[str, Any]] = []
        with (out / "traces.jsonl").open("rb") as fh:
            replay(read_lines(fh, c.input.max_message_bytes), c,
                   lambda a, into=alerts: into.append(alert_record(a)))
        (row,) = [r for r in evaluate(labels, alerts)["incidents"]
                  if r["scenario"] == "canary_version"]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shares", default="0.02,0.05,0.1,0.2,0.5")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--hours", type=float, default=2.5)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    print("share  with attribution: detected, worst, named  |  without: detected, worst")
    with tempfile.TemporaryDirectory() as tmp:
        for share in (float(s) for s in a.shares.split(",")):
            on, off = zip(*(run(share, s, a.hours, Path(tmp)) for s in seeds), strict=True)
            print(f"{share:>5.0%}  {sum(r['detected'] for r in on)}/{len(seeds)}, "
                  f"{','.join(str(r['max_severity']) for r in on)}, "
                  f"{sum(bool(r['suspected_change_ok']) for r in on)}/{len(seeds)}"
                  f"  |  {sum(r['detected'] for r in off)}/{len(seeds)}, "
                  f"{','.join(str(r['max_severity']) for r in off)}", flush=True)


if __name__ == "__main__":
    main()
