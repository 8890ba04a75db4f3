"""OpenTelemetry input against native events, on the same traffic, in one run (not a test).

    python bench/otlp.py [--events 500000] [--repeat 3] [--before DIR] [--no-worker]

The traffic is bench/stream.py's (48 cohorts, a refusal spike in the last window) in
100-event messages: native JSON-array batches, and the same events as GenAI spans, 100 to a
``TracesData`` written by the official OTLP encoder (``otlp_proto``, as the Collector's Kafka
exporter writes them). Three measurements:

* CPU µs per event of the decoders alone, and of the steps below the OTLP one (parse, walk);
* stage 1 in process (decode, hard rules, window counting: :class:`detector.core.stage1.Stage1`
  over the messages in 82-message chunks, as the worker feeds it), best of ``--repeat``;
* the worker: each format's whole traffic is in the broker before a worker starts, so one
  `detector run` worker drains a backlog from its first assignment until the alerts of the
  traffic's end are out (as bench/stream.py times it). The traffic ends with one unauthorized
  tool call per partition (a cohort each), which pages at once. Each round runs native,
  otlp_proto (and ``--before DIR``'s worker on otlp_proto: another source tree, e.g. main's)
  in turn; per run: the drain rate, the worker's CPU seconds, its capacity (events per CPU
  second: its rate on a core of its own), where its event loop's wall time went (on a core;
  runnable but waiting for one: the machine's other load; blocked: on the broker, timers,
  stage 2) and its peak RSS. Ratios are medians of the ratios within a round.

The target is otlp_proto at >= 50 % of native's events/s on a worker's capacity. A backlog
keeps the worker's event loop runnable throughout (blocked stays near 0), so the drain rate
is the CPU it gets: on a machine shared with other load, a share of a core that changes from
run to run, which the wall-clock ratio carries and the capacity ratio does not.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests" / "integration")]

import harness  # noqa: E402
import orjson  # noqa: E402
import stream  # noqa: E402

from detector.config import load_config  # noqa: E402
from detector.core.events import decode_many  # noqa: E402
from detector.core.otlp import decoder_for  # noqa: E402
from detector.core.otlp_wire import proto_view  # noqa: E402
from detector.core.stage1 import Stage1  # noqa: E402
from detector.lab.broker import Tansu  # noqa: E402
from detector.lab.genai_spans import to_otlp_proto  # noqa: E402
from detector.stream.kafka_io import produce  # noqa: E402

CHUNK = 82   # messages of 100 events in one stage-1 chunk (stage1_runner.CHUNK_EVENTS)


def ends(n: int) -> list[bytes]:
    """One unauthorized tool call per partition (produce() goes round-robin), a cohort each."""
    return [orjson.dumps({"ts": stream.end_ts(n) - 1, "operation": "execute_tool",
                          "tenant": f"t{p:02d}", "app": "support-agent", "tool_name": "x",
                          "tool_authorized": False}) for p in range(stream.P)]


def otlp_messages(native: list[bytes]) -> list[bytes]:
    """Each native message's events as one OTLP protobuf message."""
    return [to_otlp_proto(decode_many([m])[0]) for m in native]


def walk(traces: Any, msgs: list[bytes]) -> None:
    """What any mapping must touch: each span's attribute bytes and the fields read."""
    for data in msgs:
        m = traces()
        m.ParseFromString(data)
        for rs in m.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    list(s.attributes)
                    (s.trace_id.hex(), s.span_id.hex(), s.start_time_unix_nano,
                     s.end_time_unix_nano, s.events, s.HasField("status"))


def decoder_steps(native: list[bytes], otlp: list[bytes], repeat: int) -> None:
    """CPU µs per event of the decoders alone and of the steps below the OTLP one (parse,
    walk), best of ``repeat`` taking turns: where the decoder's time goes."""
    cfg = load_config(None, env=False)
    traces, _ = proto_view()
    n = sum(len(ss.spans) for d in otlp for rs in traces.FromString(d).resource_spans
            for ss in rs.scope_spans)
    dec = decoder_for("otlp_proto", cfg.input.otlp)
    steps: dict[str, Callable[[], object]] = {
        "native decoder": lambda: [decode_many(native[i:i + CHUNK]) for i in
                                   range(0, len(native), CHUNK)],
        "otlp_proto: parse": lambda: [traces.FromString(d) for d in otlp],
        "otlp_proto: parse + walk": lambda: walk(traces, otlp),
        "otlp_proto decoder": lambda: [dec(otlp[i:i + CHUNK], 1 << 20) for i in
                                       range(0, len(otlp), CHUNK)],
    }
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeat):
        for k, f in steps.items():
            t = time.process_time()
            f()
            best[k] = min(best[k], time.process_time() - t)
    print("CPU per event, best of {}: {}".format(repeat, "; ".join(
        f"{k} {v / n * 1e6:.2f} µs" for k, v in best.items())), flush=True)


def stage1_rate(fmt: str, msgs: list[bytes], n: int) -> float:
    cfg = load_config(None, env=False)
    s1 = Stage1(cfg, decoder=decoder_for(fmt, cfg.input.otlp))
    t = time.perf_counter()
    for i in range(0, len(msgs), CHUNK):
        s1.feed_many(msgs[i:i + CHUNK])
    return n / (time.perf_counter() - t)


_write_config = stream.write_config


def with_format(fmt: str) -> None:
    """bench/stream.py's worker runs write their config through ``write_config``: have it
    set ``input.format`` as well."""
    def write(path: Path, **kafka: object) -> Path:
        out = _write_config(path, **kafka)
        out.write_text(out.read_text().replace('\nformat = "native"\n',
                                               f'\nformat = "{fmt}"\n', 1))
        return out

    stream.write_config = write


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--before", type=Path, help="also run this source tree's worker on "
                    "otlp_proto, in each round")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-worker", action="store_true", help="stage 1 in process only")
    args = ap.parse_args()
    n = args.events
    evs = stream.events(n)
    native = stream.messages("batch100", evs) + ends(n)
    t = time.perf_counter()
    otlp = otlp_messages(native)
    print(f"{n:,} events: native {sum(map(len, native)) / 1e6:.1f} MB, otlp_proto "
          f"{sum(map(len, otlp)) / 1e6:.1f} MB in {len(otlp):,} messages (encoded in "
          f"{time.perf_counter() - t:.1f} s)", flush=True)
    data = {"native": native, "otlp_proto": otlp}

    decoder_steps(native, otlp, max(args.repeat, 5))
    s1: dict[str, list[float]] = {"native": [], "otlp_proto": []}
    for _ in range(args.repeat):
        for fmt, rates in s1.items():
            rates.append(stage1_rate(fmt, data[fmt], n + 2 * stream.P))
    ratio = max(s1["otlp_proto"]) / max(s1["native"])
    print(f"stage 1 in process, best of {args.repeat}: native {max(s1['native']):,.0f} "
          f"events/s, otlp_proto {max(s1['otlp_proto']):,.0f} spans/s: {ratio:.0%} "
          f"(runs: native {', '.join(f'{x:,.0f}' for x in s1['native'])}; otlp "
          f"{', '.join(f'{x:,.0f}' for x in s1['otlp_proto'])})", flush=True)
    if args.no_worker:
        return 0

    expected = stream.expected_alerts(native)
    if len({i for i, s in expected if s == "firing"}) < stream.P:
        raise SystemExit("the traffic's end does not page: nothing to wait for")
    tmp = Path(tempfile.mkdtemp(prefix="bench-otlp-"))
    variants = [Variant("native", "native", ROOT), Variant("otlp_proto", "otlp_proto", ROOT)]
    if args.before:
        variants.append(Variant(f"otlp_proto ({args.before.name}, before)", "otlp_proto",
                                args.before.resolve()))
    runs: dict[str, list[stream.Run]] = {v.label: [] for v in variants}
    with Tansu(log_dir=tmp) as b:
        for fmt, msgs in data.items():
            b.create_topics([f"traces-{fmt}"], stream.P)
            asyncio.run(produce(b.bootstrap, f"traces-{fmt}", msgs, partitions=stream.P))
        del data, native, otlp   # the broker holds them now
        for i in range(args.repeat):
            for v in variants:
                runs[v.label].append(drain(b, tmp, v, expected))
            print(f"round {i + 1}: " + "; ".join(f"{k} {shares(n, rs[-1])}"
                                                 for k, rs in runs.items()), flush=True)
    for k, rs in runs.items():
        med = sorted(rs)[len(rs) // 2]
        unit = "spans" if k != "native" else "events"
        print(f"worker, {k}: capacity {statistics.median(n / x.worker_cpu for x in rs):,.0f} "
              f"{unit} per CPU second (median of "
              f"{', '.join(f'{n / x.worker_cpu:,.0f}' for x in rs)}), "
              f"{statistics.median(x.worker_cpu for x in rs) / n * 1e6:.1f} CPU-s per million; "
              f"drained {n / med.seconds:,.0f} {unit}/s (median of "
              f"{', '.join(f'{n / x.seconds:,.0f}' for x in rs)}) with the event loop "
              f"{statistics.median(x.loop_run / x.seconds for x in rs):.0%} on a core, "
              f"{statistics.median(x.loop_wait / x.seconds for x in rs):.0%} waiting for one "
              f"(medians); peak RSS {max(x.rss_kb[0] for x in rs) / 1024:.0f} MiB", flush=True)
    for v in variants[1:]:
        rs, nat = runs[v.label], runs["native"]
        rate = [x.seconds / o.seconds for x, o in zip(nat, rs, strict=True)]
        cpu = [x.worker_cpu / o.worker_cpu for x, o in zip(nat, rs, strict=True)]
        print(f"worker {v.label} / native: capacity (events per CPU second) "
              f"{statistics.median(cpu):.0%} (median of {', '.join(f'{r:.0%}' for r in cpu)}; "
              f"target >= 50 %); events/s drained {statistics.median(rate):.0%} (median of "
              f"{', '.join(f'{r:.0%}' for r in rate)}: the same, times the ratio of the shares "
              f"of a core the machine's other load left each run)", flush=True)
    return 0


def shares(n: int, r: stream.Run) -> str:
    """One run: its drain rate, CPU per event and capacity (events per CPU second: the rate
    on a core of its own), and where the worker's event loop spent the wall time: on a core,
    runnable but waiting for one (the machine's other load), or blocked (on the broker, a
    timer, stage 2)."""
    on, wait = r.loop_run / r.seconds, r.loop_wait / r.seconds
    return (f"{n / r.seconds:,.0f} events/s drained, {r.worker_cpu / n * 1e6:.1f} CPU-s/M "
            f"events ({n / r.worker_cpu:,.0f} per CPU second); event loop {on:.0%} on a core, "
            f"{wait:.0%} waiting for one, {max(0.0, 1 - on - wait):.0%} blocked; peak RSS "
            f"{r.rss_kb[0] / 1024:.0f} MiB")


class Variant(NamedTuple):
    label: str
    fmt: str     # input.format
    tree: Path   # the source tree the worker runs


def drain(b: Tansu, tmp: Path, v: Variant, expected: set[tuple[str, str]]) -> stream.Run:
    """One worker of ``v``'s tree drains the format's topic (a new group, from the start)."""
    with_format(v.fmt)
    # WorkerProc runs `python -m detector.stream.app` in harness.ROOT, first on its path.
    harness.ROOT, root = v.tree, harness.ROOT
    try:
        return stream.through_workers(b, tmp, f"traces-{v.fmt}", 1, v.fmt, expected)
    finally:
        harness.ROOT = root


if __name__ == "__main__":
    sys.exit(main())
