"""decode_many over the first lines of a trace file, in replay's blocks: the decoder's hot path
alone, to count its instructions (times on a shared machine are too noisy for a 1 % change).

    valgrind --tool=callgrind python bench/decode_runs.py FILE [--lines 100000] [--only-read]

Run with each tree's interpreter (its editable install is the code decoded with); the
difference of the two counts is the change's cost. ``--only-read`` reads and blocks the lines
without decoding them: what to subtract for the decoding alone.
"""

from __future__ import annotations

import argparse
import time
from itertools import islice

from detector.core.events import decode_many
from detector.lab.replay import BLOCK_LINES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--only-read", action="store_true")
    args = ap.parse_args()
    with open(args.file, "rb") as f:
        lines = [ln.rstrip(b"\n") for ln in islice(f, args.lines)]
    lines = [ln for ln in lines if ln.strip()]
    blocks = [lines[i:i + BLOCK_LINES] for i in range(0, len(lines), BLOCK_LINES)]
    events = rejected = 0
    t = time.process_time()
    if not args.only_read:
        for b in blocks:
            ok, bad = decode_many(b)
            events += len(ok)
            rejected += len(bad)
    us = (time.process_time() - t) / max(1, len(lines)) * 1e6
    print(f"{len(lines):,} lines, {events:,} events, {rejected:,} rejected; "
          f"{us:.2f} µs a line (CPU)")


if __name__ == "__main__":
    main()
