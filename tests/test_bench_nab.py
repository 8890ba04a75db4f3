"""bench/nab.py: NAB rows in through `detector replay`, NAB's result files out."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

from detector.config import parse_config

ROOT = Path(__file__).resolve().parents[1]


def _nab():   # bench/ is scripts, not a package
    spec = importlib.util.spec_from_file_location("bench_nab", ROOT / "bench" / "nab.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_nab"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_config_differs_from_the_default_only_in_the_mapping() -> None:
    import tomllib

    nab = _nab()
    cfg = parse_config(tomllib.loads(nab.nab_config()))
    default = parse_config(tomllib.loads((ROOT / "config" / "detector.toml").read_text()))
    assert cfg.baselines == default.baselines and cfg.windows == default.windows
    lat = cfg.signal("latency_ms")
    assert (lat.enabled, lat.direction, lat.min_count) == (True, "both", 1)
    assert not cfg.signal("volume").enabled and not cfg.signal("refusal_rate").enabled


def test_one_row_is_one_window_and_results_follow_the_data_rows(tmp_path: Path) -> None:
    nab = _nab()
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    values = [10.0 + (i % 3) * 0.1 for i in range(300)]
    values[200] = 50.0                  # a spike
    values[250] = -1.0                  # a negative value: sent as 0
    rows = [f"2015-01-01 {i // 60:02d}:{i % 60:02d}:00,{v}" for i, v in enumerate(values)]
    (data / "s.csv").write_text("timestamp,value\r\n" + "\r\n".join(rows))   # CRLF, no final \n
    config = tmp_path / "c.toml"
    config.write_text(nab.nab_config())
    r = nab.run_file(tmp_path / "data", "cat/s.csv", config, tmp_path)
    assert len(r.raw) == len(r.decide) == 300 and r.clamped == 1
    # Warm-up rows get 0, and so does the last: input stopped at its window's start, so
    # replay does not score it as if it were complete.
    assert r.raw[:20] == [0.0] * 20 and r.scored == 279
    assert all(0.0 <= x < 1.0 for x in r.raw)
    assert r.decide[200] == 1 and r.raw[200] == max(r.raw[:250])
    assert sum(r.decide[20:200]) == 0
    nab.write_results(tmp_path / "results", r)
    for det in nab.DETECTORS:
        with (tmp_path / "results" / det / "cat" / f"{det}_s.csv").open() as f:
            out = list(csv.reader(f))
        assert out[0] == ["timestamp", "value", "anomaly_score", "label"]
        assert [row[:2] for row in out[1:]] == [row.split(",") for row in rows]
    inside, outside, hit = nab.label_counts(r, [["2015-01-01 03:15:00.000000",
                                                  "2015-01-01 03:30:00.000000"]])
    assert (inside, hit) == (1, 1) and outside == sum(r.decide) - 1
