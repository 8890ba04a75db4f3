"""The hostile-input campaign at CI size: ~20 k messages of every hostile class mixed with
valid traffic through a real `detector run` on the embedded broker. The worker must not crash,
every event must come out once (decoded or dead-lettered, the dead-letter topic agreeing with
/metrics by reason), and the prompt marker must be in no output. ``bench/hostile.py`` runs the
same campaign with a million messages and prints the figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import HOSTILE, problems, report, run_campaign

from detector.lab.broker import Tansu

pytestmark = pytest.mark.integration


def test_hostile_campaign(broker: Tansu, tmp_path: Path) -> None:
    lines: list[str] = []
    tally, out = run_campaign(broker, tmp_path, 20_000, seed=8, tag="hostile-ci", timeout=300,
                              log=lines.append)
    report(tally, out, log=lines.append)
    print("\n".join(lines))
    assert set(HOSTILE) <= set(tally.kinds)   # every class was sent
    assert not problems(tally, out), "\n".join(lines)
    assert out.alerts > 0, "no alert came out: the marker check saw no alerts"


def test_corrupt_record_batches_hold_nothing_up(broker: Tansu, tmp_path: Path) -> None:
    """Half-way through valid traffic, one record batch with a bad CRC in every partition: the
    events before and after it must all come out (its own records may be skipped or read).
    Only this hostile class, so a failure here is about corrupt batches alone."""
    lines: list[str] = []
    tally, out = run_campaign(broker, tmp_path, 4_000, seed=9, tag="hostile-crc", corrupt=True,
                              skip=HOSTILE, timeout=300, log=lines.append)
    report(tally, out, log=lines.append)
    print("\n".join(lines))
    assert len(tally.corrupt) == 4
    assert not problems(tally, out), "\n".join(lines)
