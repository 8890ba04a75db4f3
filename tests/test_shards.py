"""Stage 2 split over shards by the finest cohort gives one Stage2's alerts, field for field,
and spreads its scoring with the finest cohorts even under one root cohort."""

from __future__ import annotations

from pathlib import Path

import msgspec
import orjson
import pytest

from detector.config import load_config
from detector.core.pipeline import Pipeline
from detector.core.shards import ShardedStage2, shard_of
from detector.lab.simulate import simulate


def _alerts(lines: list[bytes], shards: int) -> tuple[list[bytes], Pipeline]:
    pipe = Pipeline(load_config(None, env=False), shards=shards)
    out = []
    for i in range(0, len(lines), 4096):
        out += pipe.feed_many(lines[i:i + 4096])
    out += pipe.finish()
    return [msgspec.json.encode(a) for a in out], pipe


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = tmp_path_factory.mktemp("sim")
    simulate(out, hours=4, seed=11, rate=5.0)
    return Path(out / "traces.jsonl").read_bytes().splitlines()


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_stage2_gives_the_same_alerts(traffic: list[bytes], shards: int) -> None:
    want, _ = _alerts(traffic, 1)
    got, pipe = _alerts(traffic, shards)
    # The traffic exercises what crosses shards: grouped parent alerts, hard-rule hits, and
    # alerts on finest cohorts owned by different shards.
    decoded = [msgspec.json.decode(a) for a in want]
    assert any(a.get("grouped_cohorts") for a in decoded)
    assert any(a["signal"] == "unauthorized_tool_call" for a in decoded)
    s2 = pipe.stage2
    assert isinstance(s2, ShardedStage2)
    owners = {shard_of(tuple(a["cohort"].values()), shards) for a in decoded
              if "tenant" in a["cohort"]}
    assert len(owners) > 1
    assert got == want
    assert all(sh.pairs_scored for sh in s2.shards)


def test_one_app_groups_children_of_different_shards(traffic: list[bytes]) -> None:
    """Every tenant under one app in one environment: one root cohort, so every parent alert
    groups children that the shards own apart, and the split still gives the same alerts."""
    one = []
    for line in traffic:
        try:
            e = orjson.loads(line)
        except orjson.JSONDecodeError:
            one.append(line)
            continue
        if isinstance(e, dict):
            e["app"], e["environment"] = "support-agent", "production"
        one.append(orjson.dumps(e))
    want, _ = _alerts(one, 1)
    got, pipe = _alerts(one, 2)
    grouped = [a for a in map(msgspec.json.decode, want) if a.get("grouped_cohorts")]
    assert grouped
    assert got == want
    s2 = pipe.stage2
    assert isinstance(s2, ShardedStage2)
    pairs = [sh.pairs_scored for sh in s2.shards]
    assert min(pairs) > 0.5 * max(pairs)   # one root cohort, and still both shards score


def test_a_quiet_window_reports_nothing(traffic: list[bytes]) -> None:
    """What crosses between shards grows with anomalies, not with cohorts: clean windows
    send an empty report (a few bytes)."""
    pipe = Pipeline(load_config(None, env=False), shards=2)
    s2 = pipe.stage2
    assert isinstance(s2, ShardedStage2)
    for i in range(0, len(traffic) // 4, 4096):   # the first hour: warm-up, no incident yet
        pipe.feed_many(traffic[i:i + 4096])
    assert s2.windows_closed > 20
    # Two reports a window (one per shard), each a window number, a shard and two empty lists.
    assert 0 < s2.report_bytes <= 16 * 2 * s2.windows_closed
