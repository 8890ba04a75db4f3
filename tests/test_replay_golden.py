"""Refactoring changes no behaviour: a simulated 4-hour file replays to recorded digests.

The digests are of ``detector replay``'s alerts and ``--scores-out`` on ``detector simulate
--hours 4 --seed 11 --rate 5``. A change meant to alter detection updates them on purpose:

    python tests/test_replay_golden.py --update

and says so in its commit message; any other change must leave them as they are.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "fixtures" / "replay_4h.json"
SIMULATE = ["--hours", "4", "--seed", "11", "--rate", "5"]
DETECTOR = [sys.executable, "-m", "detector.cli"]


def digests(work: Path) -> dict[str, str]:
    subprocess.run([*DETECTOR, "simulate", "--out", str(work), *SIMULATE], check=True,
                   capture_output=True)
    alerts, scores = work / "alerts.jsonl", work / "scores.jsonl"
    subprocess.run([*DETECTOR, "replay", str(work / "traces.jsonl"), "--quiet",
                    "--alerts-out", str(alerts), "--scores-out", str(scores)],
                   check=True, capture_output=True)
    return {"traces": hashlib.sha256((work / "traces.jsonl").read_bytes()).hexdigest(),
            "alerts": hashlib.sha256(alerts.read_bytes()).hexdigest(),
            "scores": hashlib.sha256(scores.read_bytes()).hexdigest()}


def test_replay_output_is_unchanged(tmp_path: Path) -> None:
    want = json.loads(GOLDEN.read_text())
    got = digests(tmp_path)
    assert got["traces"] == want["traces"], "the simulator's output changed"
    assert (got["alerts"], got["scores"]) == (want["alerts"], want["scores"]), (
        "replay output changed; if that is intended: python tests/test_replay_golden.py --update")


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        GOLDEN.write_text(json.dumps(digests(Path(d)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
