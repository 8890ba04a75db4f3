"""Reading trace files: the bounded line reader against plain line iteration, and the peak
memory of `detector replay` on an over-long line.

    python bench/tracefile.py [--events 1000000] [--repeat 5] [--file traces.jsonl]
                              [--line-mb 50]

Simulates about ``--events`` events (or reads ``--file``) and times, taking turns ``--repeat``
times, (a) ``for line in file`` (what replay did before the bound) and (b)
``tracefile.read_lines`` on the same file, and the same two on a gzip copy; it prints lines/s
and the ratio (b)/(a) of each turn. Then it runs `detector replay` in a child process on a
small file and on the same file with one ``--line-mb`` MB line in it, and prints each peak RSS
(the child's ``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.core.events import MAX_MESSAGE_BYTES
from detector.lab.tracefile import open_traces, read_lines


def _timed(path: Path, lines_of: Callable[[object], Iterable[object]]) -> tuple[int, float]:
    with path.open("rb") as fh:
        t0 = time.perf_counter()
        n = sum(1 for _ in lines_of(open_traces(fh, path.name)))
        return n, time.perf_counter() - t0


def _plain(fh: object) -> Iterable[object]:
    return fh  # type: ignore[return-value]


def _bounded(fh: object) -> Iterable[object]:
    return read_lines(fh, MAX_MESSAGE_BYTES)  # type: ignore[arg-type]


_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _peak_rss_mib(path: Path) -> float:
    cmd = [sys.executable, "-c", _PEAK, sys.executable, "-m", "detector.cli", "replay",
           str(path), "--quiet", "--dead-letter", "/dev/null"]
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--file", help="a JSON Lines file to use instead of simulating")
    ap.add_argument("--line-mb", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracefile-"))
    try:
        if args.file:
            path = Path(args.file)
        else:
            from detector.lab.simulate import simulate

            hours = 4.0
            simulate(tmp, hours=hours, seed=1, rate=args.events / (hours * 3600))
            path = tmp / "traces.jsonl"
        packed = tmp / "traces.jsonl.gz"
        packed.write_bytes(gzip.compress(path.read_bytes(), compresslevel=6))
        print(f"input: {path} ({path.stat().st_size / 1e6:.0f} MB; gzip "
              f"{packed.stat().st_size / 1e6:.0f} MB)")
        for name, p in (("plain", path), ("gzip", packed)):
            ratios = []
            for _ in range(args.repeat):
                n, t_plain = _timed(p, _plain)
                m, t_bounded = _timed(p, _bounded)
                assert n == m, (n, m)
                ratios.append(t_plain / t_bounded)
                print(f"{name}: {n:,} lines; for-line {n / t_plain:,.0f} lines/s, read_lines "
                      f"{n / t_bounded:,.0f} lines/s ({t_plain / t_bounded:.2f} of for-line)")
            print(f"{name}: read_lines at {statistics.median(ratios):.2f} of for-line's speed "
                  f"(median of {args.repeat})")

        good = b'{"ts": 1700000000, "operation": "chat"}\n'
        small, big = tmp / "small.jsonl", tmp / "big.jsonl"
        small.write_bytes(good * 1000)
        with big.open("wb") as fh:
            fh.write(good * 500 + b'{"ts": 1700000000, "operation": "chat", "x": "')
            for _ in range(args.line_mb):
                fh.write(b"a" * (1 << 20))
            fh.write(b'"}\n' + good * 500)
        base, with_line = _peak_rss_mib(small), _peak_rss_mib(big)
        print(f"replay peak RSS: {base:.0f} MiB on 1,000 short lines, {with_line:.0f} MiB with "
              f"one {args.line_mb} MiB line among them (+{with_line - base:.0f} MiB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
