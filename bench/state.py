"""Stage-2 state per route key: v2 (plain msgpack) against v1 (e45989b's pickles), same run.

    python bench/state.py [--state tests/fixtures/state_v1/busy.state] [--repeat 200]

Loads one busy route key's state (by default the fixture e45989b wrote: support-agent /
production after 2 h 20 min of simulated traffic) and prints, for v1 written by e45989b's own
``detector/state.py`` and ``baselines/codec.py`` (from git) and v2 by today's: bytes per
(cohort, signal) baseline alone and in the compressed route document, and dump and load time
per route key (best of ``--repeat``, the formats taking turns), with v2 / v1 ratios. Also the
one-off load of v1 bytes by today's code (unpickle, then upgrade through v2's checks).
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import msgspec  # noqa: E402

from baselines import codec  # noqa: E402
from baselines.rate import TWIN, as_reference  # noqa: E402
from detector.config import load_config  # noqa: E402
from detector.core import snapshot as state  # noqa: E402
from detector.core.stage2 import Stage2  # noqa: E402

V1_COMMIT = "e45989b"


def _old_module(path: str, name: str, **globals_: object) -> ModuleType:
    """``path`` as it was at V1_COMMIT, imported under ``name``."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{V1_COMMIT}:{path}"],
                         check=True, capture_output=True, text=True).stdout
    # e45989b's flat module names, for its imports: today's modules stand in for them.
    for old_name, new in (("detector.alerts", "detector.core.lifecycle"),
                          ("detector.partials", "detector.core.partials"),
                          ("detector.pipeline", "detector.core.stage2"),
                          ("detector.scoring", "detector.core.scoring"),
                          ("detector.signals", "detector.core.signals")):
        sys.modules.setdefault(old_name, importlib.import_module(new))
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    exec(compile(src, f"{V1_COMMIT}:{path}", "exec"), mod.__dict__)
    mod.__dict__.update(globals_)
    return mod


def _old_load(old: ModuleType, fresh: Callable[[], Stage2], v1: bytes, repeat: int) -> float:
    """e45989b's loader on its own bytes, or inf where it cannot run beside today's classes."""
    try:
        return _best(lambda: old.load_route(fresh(), v1), repeat)
    except Exception:   # old code against new classes: reported as n/a
        return float("inf")


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", type=Path,
                    default=ROOT / "tests" / "fixtures" / "state_v1" / "busy.state")
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    old_codec = _old_module("baselines/codec.py", "old_codec")
    old = _old_module("detector/state.py", "old_state")   # its path at V1_COMMIT
    old.codec = old_codec
    cfg = load_config(None, env=False)
    s = Stage2(cfg)
    state.load_route(s, args.state.read_bytes())
    (route,) = state.routes(s)
    # The formats are compared on the objects v1 pickled: a rate loaded into its C twin goes
    # back to the reference (baselines/rate.py; v2 writes the same bytes for either).
    for m in s.models.values():
        m.baselines = {k: as_reference(b) if type(b) is TWIN else b
                       for k, b in m.baselines.items()}
    baselines = [b for m in s.models.values() for b in m.baselines.values()]
    # v1 as e45989b wrote it (the fixture): e45989b's dump of today's objects would pickle
    # today's classes, which no v1 reader knows.
    v1 = args.state.read_bytes()
    v2 = state.dump_route(s, route)
    raw1, raw2 = len(zlib.decompress(v1)), len(zlib.decompress(v2))
    one1 = sum(len(pickle.dumps(b, protocol=5)) for b in baselines) / len(baselines)
    one2 = sum(len(msgspec.msgpack.encode(codec.encode(b))) for b in baselines) / len(baselines)
    n = len(baselines)
    print(f"route {route!r}: {len(s.models)} cohorts, {n} (cohort, signal) baselines")
    print(f"{'':34}{'v1':>10}{'v2':>10}{'v2/v1':>8}")

    def row(what: str, a: float, b: float, fmt: str = "{:10.1f}") -> None:
        print(f"{what:34}{fmt.format(a)}{fmt.format(b)}{b / a:8.2f}")

    row("B per baseline, alone", one1, one2)
    row("B per baseline, route doc raw", raw1 / n, raw2 / n)
    row("B per baseline, route doc zlib", len(v1) / n, len(v2) / n)
    row("B route doc zlib", len(v1), len(v2), "{:10.0f}")
    fresh = lambda: Stage2(cfg)  # noqa: E731
    times = {"dump1": [], "dump2": [], "load1": [], "load2": []}
    for _ in range(2):   # taking turns, twice: a noisy neighbour hits both
        times["dump1"].append(_best(lambda: old.dump_route(s, route), args.repeat // 2))
        times["dump2"].append(_best(lambda: state.dump_route(s, route), args.repeat // 2))
        times["load1"].append(_old_load(old, fresh, v1, args.repeat // 2))
        times["load2"].append(_best(lambda: state.load_route(fresh(), v2), args.repeat // 2))
    t = {k: min(v) * 1e3 for k, v in times.items()}
    row("ms dump per route key", t["dump1"], t["dump2"], "{:10.2f}")
    if t["load1"] == float("inf"):
        print(f"{'ms load per route key':34}{'n/a':>10}{t['load2']:10.2f}"
              "  (e45989b's loader needs e45989b's baseline classes, not in this process)")
    else:
        row("ms load per route key", t["load1"], t["load2"], "{:10.2f}")
    up = min(_best(lambda: state.load_route(fresh(), v1), args.repeat // 4) for _ in range(2))
    print(f"{'ms load of v1 by today (upgrade)':34}{up * 1e3:10.2f}")
    empty = _best(lambda: fresh(), args.repeat // 2) * 1e3
    print(f"(each load includes a fresh Stage2: {empty:.2f} ms)")


if __name__ == "__main__":
    main()
