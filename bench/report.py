"""`make bench`: run every bench of bench/ with its standard arguments and write what each
printed into docs/benchmarks.md, a section per bench with the date (UTC), the commit and the
exact command, so no figure in the docs stands without them.
    python bench/report.py [--only NAME ...] [--timeout 1800] [--out docs/benchmarks.md]
``--only`` (or BENCH=name,name) runs some benches and keeps the other sections as they were.
bench/nab.py needs NAB's tree: NAB=DIR NAB_PYTHON=PY include it (NAB_DATA=DIR if NAB's data
is not in shared/nab beside the clone); without them its section says how. BENCH_BASE=DIR
times DIR's stage 2 beside this tree's in bench/stage2.py (before and after, one run), and
runs bench/replay.py on DIR's code (``--tree``) just before this tree's, in the same section.
Each bench runs in its own process, bounded by ``--timeout``; its stdout and stderr are kept
verbatim. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks.md"
SECTION = re.compile(r"^## `bench/(\w+)\.py`$", re.M)


class Bench(NamedTuple):
    name: str
    args: list[str]      # after `python bench/<name>.py`
    what: str


# The standard arguments: each bench's defaults, except where a default run would take the
# shared machine for an hour (said in `what`).
BENCHES = [
    Bench("replay", [], "the detection core (decode → alerts) against `orjson.loads` alone on "
          "the same lines; state bytes per (cohort, signal) (`BENCH_BASE=DIR`: DIR's code "
          "first, then this tree's)"),
    Bench("stage2", [], "stage 2 alone: (cohort, signal) window updates per second on one core, "
          "dense and sparse (`BENCH_BASE=DIR`: against DIR's code too, in turns)"),
    Bench("stage1", [], "stage 1 in process, µs an event: decoding by key order, counting in C "
          "and in Python"),
    Bench("stage2_input", [], "what stage 1's flush hands stage 2, per partition or merged per "
          "worker"),
    Bench("state", [], "a busy route key's stage-2 state, format 2 against e45989b's format 1"),
    Bench("tracefile", [], "replay's bounded line reader against `for line in file`; replay's "
          "peak memory with one over-long line"),
    Bench("detection_limits", [], "the smallest rate change seen within three and ten windows; "
          "the detection targets through the Pipeline"),
    Bench("alertmanager", [], "the sink into a real Alertmanager; offending event → Kafka → "
          "worker → Alertmanager API (bench/paging.py's measurement, so that is not run twice)"),
    Bench("tansu", [], "the embedded broker's fetch wait and group-join behaviour"),
    Bench("shutdown", [], "SIGTERM → exit of `detector run` and of `detector demo`"),
    Bench("stream", ["--repeat", "1", "--traffic", "apps", "--traffic", "one-app"],
          "one worker against raw aiokafka + orjson, two workers against one, on the embedded "
          "broker, with stage 2's load per worker and CPU per million events, on 4 apps and on "
          "one app in one environment (one round; the default 3 take three times as long)"),
    Bench("capacity", ["--repeat", "1", "--tenants", "200", "--rate", "50"],
          "per-core costs for docs/scaling.md's capacity model, and stage 2's spread over 2 "
          "shards by the finest cohort (one round of 200 tenants at 50 events/s)"),
    Bench("fetch_memory", ["--repeat", "1"], "one worker's peak RSS and speed per "
              "`kafka.fetch_max_bytes` on compressed batches (one round; `--before DIR` "
              "compares with other code)"),
    Bench("hostile", ["--messages", "200000"], "hostile input of every class through a real "
          "worker, every message accounted for (200 k messages; the default million takes "
          "five times as long)"),
    Bench("otlp", ["--events", "300000"], "OpenTelemetry input (otlp_proto) against native "
          "events on the same traffic: the decoders, stage 1 in process and one worker "
          "draining a backlog (capacity in events per CPU second, drain rate, where the "
          "worker's event loop spent the time, peak RSS; 300 k events, the default 500 k "
          "takes longer to encode)"),
    Bench("attribution", [], "issue 19: at what rollout share a harmful canary is paged, "
          "with and without attribution, and whether its version is named"),
    Bench("nab", [], "NAB's 58 real series through `detector replay`, scored by NAB's own "
          "scorer"),
]


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()
    # The report itself does not count: it is what this run is writing.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            f":!{OUT.relative_to(ROOT)}"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def nab_args() -> list[str] | None:
    """bench/nab.py's arguments from NAB / NAB_PYTHON / NAB_DATA, or None to skip it."""
    nab, py = os.environ.get("NAB"), os.environ.get("NAB_PYTHON")
    if not nab or not py:
        return None
    data = os.environ.get("NAB_DATA")
    extra = ["--data", f"{data}/data", "--labels", f"{data}/labels/combined_windows.json"] \
        if data else []
    return [*extra, "--nab", nab, "--nab-python", py]


def fence(text: str) -> str:
    """A code fence longer than any backtick run in ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def run(bench: Bench, timeout: float) -> str:
    """One bench's section: heading, what it measures, provenance line, its output."""
    args = bench.args
    head = f"## `bench/{bench.name}.py`\n\n{bench.what}.\n\n"
    if bench.name == "nab":
        found = nab_args()
        if found is None:
            return head + ("Not run: it needs NAB's tree (github.com/numenta/NAB) and a Python "
                           "that runs it. Include it with `NAB=/path/to/NAB "
                           "NAB_PYTHON=/path/to/python make bench` (and `NAB_DATA=DIR` when "
                           "NAB's data is not in shared/nab beside the clone).\n")
        args = found
    if bench.name == "stage2" and os.environ.get("BENCH_BASE"):
        args = [*args, "--base", os.environ["BENCH_BASE"]]   # the before, in the same run
    cmd = ["python", f"bench/{bench.name}.py", *args]
    out = ""
    if bench.name == "replay" and os.environ.get("BENCH_BASE"):
        # The before first, DIR's code under this harness (--tree), then this tree's.
        out = _one(bench, [*cmd, "--tree", os.environ["BENCH_BASE"]], timeout) + "\n"
    return head + out + _one(bench, cmd, timeout)


def _one(bench: Bench, cmd: list[str], timeout: float) -> str:
    """One command's provenance line and verbatim output."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rev = commit()
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout, check=False)
        out, status = p.stdout, f"exit {p.returncode}"
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
        status = f"stopped after the {timeout:g} s bound; what it printed until then"
    text = out.decode("utf-8", "replace").rstrip("\n")
    took = time.monotonic() - t0
    f = fence(text)
    return (f"{when}, commit {rev}, `{' '.join(cmd)}` ({status}, {took:.0f} s):\n\n"
            f"{f}\n{text}\n{f}\n")


HEADER = """\
<!-- Written by `make bench` (bench/report.py). Do not edit: run it again. -->

# Benchmarks

What each bench of `bench/` printed on this project's machine (2 cores, shared), with the date,
the commit (`+dirty`: with uncommitted changes) and the exact command. Ratios are against a
baseline measured in the same run; absolute figures move with the machine's load. Nothing here
is a timed test. `make bench` writes this file; `BENCH=stage1,replay make bench` runs some
benches and keeps the other sections. Figures recorded before this file existed, with their
dates and commits: [benchmarks-history.md](benchmarks-history.md).
"""


def sections(text: str) -> dict[str, str]:
    """The bench sections of an existing report, by bench name."""
    found = list(SECTION.finditer(text))
    return {m.group(1): text[m.start(): found[i + 1].start() if i + 1 < len(found) else None]
            .rstrip("\n") + "\n" for i, m in enumerate(found)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=[],
                    help="run this bench (repeatable; default every one)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a bench may take")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    only = set(args.only) | {n for n in os.environ.get("BENCH", "").split(",") if n}
    unknown = only - {b.name for b in BENCHES}
    if unknown:
        ap.error(f"no such bench: {', '.join(sorted(unknown))}")
    old = sections(args.out.read_text("utf-8")) if args.out.exists() else {}
    # Every section there was stays until its bench has run again: the file is rewritten after
    # each bench, whole, so a run cut short loses nothing that was there.
    done: dict[str, str] = dict(old)
    for bench in BENCHES:
        if only and bench.name not in only:
            continue
        print(f"bench/report.py: bench/{bench.name}.py ...", file=sys.stderr, flush=True)
        fresh = run(bench, args.timeout)
        if not (bench.name == "nab" and nab_args() is None and "nab" in old
                and "Not run" not in old["nab"]):
            done[bench.name] = fresh   # (a real NAB run is kept over a "how to include it")
        args.out.write_text(HEADER + "".join("\n" + done[b.name] for b in BENCHES
                                             if b.name in done), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
