"""`detector replay`: the in-process driver of the detection core over a recorded file.

Each input line is one Kafka message's value: a trace event or a JSON array batch, or with
``--format otlp_json`` one OTLP JSON TracesData (the Collector's file exporter writes these);
``--format otlp_proto`` reads length-delimited OTLP protobuf messages (the file exporter's
``format: proto``) or one bare message (:func:`detector.lab.tracefile.read_proto_messages`).
Alerts are written as JSON Lines; the same input and config give byte-identical output. Replay never
pages anyone: the config's Alertmanager and Kafka sinks are not used here. With
``--scores-out`` every scored (window, cohort, signal) is written too, alert or not: what a
benchmark or a threshold study needs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

import orjson

from detector.config import Config, ConfigError
from detector.core.alert import Alert
from detector.core.events import Rejection, too_large
from detector.core.otlp import Decoder, decoder_for
from detector.core.pipeline import Pipeline
from detector.core.scoring import Decision
from detector.core.timestamps import rfc3339
from detector.lab import kafka_range
from detector.lab.tracefile import (
    Oversized,
    TraceFileError,
    open_traces,
    read_lines,
    read_proto_messages,
)
from detector.runtime import load_or_report
from detector.sinks.jsonl import JsonlSink

__all__ = ["ReplaySummary", "add_arguments", "replay", "run", "score_record", "source_lines"]

#: Lines handed to the core at once, like one consumer fetch: a fixed number, so the output
#: is the same on every run (windows close at block boundaries).
BLOCK_LINES = 256


@dataclass
class ReplaySummary:
    lines: int = 0
    blank: int = 0   # empty or whitespace-only lines: skipped, not rejections
    events: int = 0
    skipped_spans: int = 0   # OTLP spans that are not GenAI operations
    late: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    alerts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (severity, signal)
    incidents: int = 0
    cohorts: int = 0
    folded: int = 0
    seconds: float = 0.0

    def table(self) -> str:
        rows = [
            f"lines read         {self.lines:>12,}",
            f"  blank            {self.blank:>12,}",
            f"events decoded     {self.events:>12,}",
            *([f"  non-GenAI spans skipped {self.skipped_spans:,}"] if self.skipped_spans else []),
            f"late events        {self.late:>12,}",
            f"rejected           {sum(self.rejects.values()):>12,}",
        ]
        rows += [f"  {r:<17}{n:>12,}" for r, n in sorted(self.rejects.items())]
        rows += [
            f"cohorts            {self.cohorts:>12,}",
            f"  events of cohorts over cohorts.max_cohorts (counted as other) {self.folded:,}",
            f"alert incidents    {self.incidents:>12,}",
            f"alert emissions    {sum(self.alerts.values()):>12,}",
        ]
        rows += [f"  {sev} {sig:<30}{n:>6,}" for (sev, sig), n in sorted(self.alerts.items())]
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        rows.append(f"elapsed            {self.seconds:>11.2f}s  ({rate:,.0f} events/s)")
        return "\n".join(rows)


def score_record(config: Config, window: int, level: int, cohort: tuple[str, ...],
                 d: Decision) -> dict[str, Any]:
    """One scored (window, cohort, signal): the window and cohort, then every field of the
    :class:`Decision` as it is (a field added to it appears here unchanged).

    >>> from detector.config import load_config
    >>> d = Decision("latency_ms", 6.5, 900.0, 300.0, 5.0, True, 12)
    >>> r = score_record(load_config(None), 2, 0, ("chat", "prod"), d)
    >>> r["window_start"], r["window_end"], r["cohort"], r["anomalous"]
    ('1970-01-01T00:02:00.000Z', '1970-01-01T00:03:00.000Z', {'app': 'chat', \
'environment': 'prod'}, True)
    """
    size = config.windows.size_seconds
    return {"window_start": rfc3339(window * size), "window_end": rfc3339((window + 1) * size),
            "level": level, "cohort": dict(zip(config.cohorts.levels[level], cohort, strict=True)),
            **d._asdict()}


def replay(
    lines: Iterable[bytes | Oversized],
    config: Config,
    emit: Callable[[Alert], None],
    *,
    dead_letter: IO[bytes] | None = None,
    progress: IO[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    progress_every: float = 5.0,
    scores: Callable[[dict[str, Any]], None] | None = None,
    decoder: Decoder | None = None,
    binary: bool = False,
    score_pairs: Container[tuple[int, tuple[str, ...], str]] | None = None,
) -> ReplaySummary:
    """Run the core over ``lines`` (see :func:`detector.lab.tracefile.read_lines`); hand every
    alert emission to ``emit`` and, if given, every scored (window, cohort, signal) to
    ``scores`` as a :func:`score_record`. ``decoder`` reads the messages (default: the
    config's ``input.format``); ``binary``: they are whole messages, not text lines;
    ``score_pairs``: only the (level, cohort, signal) named there go to ``scores``."""
    pipe = Pipeline(config, decoder)
    if scores is not None:
        def decided(w: int, level: int, cohort: tuple[str, ...], d: Decision) -> None:
            if score_pairs is None or (level, cohort, d.signal) in score_pairs:
                scores(score_record(config, w, level, cohort, d))

        pipe.stage2.on_decision = decided
    skipped: list[Rejection] = []   # over-long lines, each at its place in the block
    s = ReplaySummary()
    ids: set[str] = set()
    start = last = clock()

    def handle(alerts: list[Alert]) -> None:
        for a in alerts:
            s.alerts[(a.severity, a.signal)] += 1
            ids.add(a.id)
            emit(a)

    def flush_rejects() -> None:
        rejects = pipe.take_rejects()
        if skipped:
            rejects = sorted([*skipped, *rejects], key=attrgetter("message"))
            skipped.clear()
        for r in rejects:
            s.rejects[r.reason] += 1
            if dead_letter is not None:
                dead_letter.write(r.to_json() + b"\n")

    block: list[bytes] = []
    for raw in lines:
        if raw.__class__ is Oversized:
            s.lines += 1
            bad = too_large(raw.size, raw.sha256, config.input.max_message_bytes)
            skipped.append(bad._replace(message=len(block)))
            continue
        # not Oversized: mypy narrows the (faster than isinstance) __class__ test one way only
        line: bytes = raw if binary else raw.rstrip(b"\r\n")  # type: ignore[assignment,union-attr]
        if not (line if binary else line.strip()):
            s.lines += 1
            s.blank += 1
            continue
        block.append(line)
        if len(block) < BLOCK_LINES:
            continue
        s.lines += len(block)
        handle(pipe.feed_many(block))
        block = []
        flush_rejects()
        if progress is not None:
            now = clock()
            if now - last >= progress_every:
                last = now
                rate = pipe.decoded / (now - start)
                progress.write(f"replay: {s.lines:,} lines, {pipe.decoded:,} events, "
                               f"{len(ids):,} alerts, {rate:,.0f} events/s\n")
                progress.flush()
    s.lines += len(block)
    handle(pipe.feed_many(block))
    handle(pipe.finish())
    flush_rejects()   # finish() dead-letters what the event clock still held
    s.events = pipe.decoded
    s.skipped_spans = pipe.skipped
    s.late = pipe.late
    s.incidents = len(ids)
    s.cohorts = len(pipe.stage2.models)
    s.folded = pipe.stage1.agg.folded
    s.seconds = clock() - start
    return s


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="JSON Lines file of trace events (or batches); "
                   "'-' for stdin; none with --kafka")
    p.add_argument("--config", help="config file (default: the packaged config/detector.toml)")
    p.add_argument("--alerts-out", help="write alerts here as JSON Lines (default: stdout)")
    p.add_argument("--dead-letter", help="write rejected events here with their reasons")
    p.add_argument("--scores-out", help="write every scored (window, cohort, signal) here as "
                   "JSON Lines: window, cohort, observed, expected, score, threshold, decision")
    p.add_argument("--format", choices=["native", "otlp_proto", "otlp_json"],
                   help="what the input holds (default: the config's input.format): native "
                   "trace events, or OpenTelemetry spans as the Collector's file exporter "
                   "writes them (otlp_json: JSON lines; otlp_proto: length-delimited)")
    p.add_argument("--quiet", action="store_true", help="no progress line or summary table")
    kafka_range.add_arguments(p)


def source_lines(args: argparse.Namespace, config: Config, fmt: str,
                 stack: ExitStack) -> tuple[Iterable[bytes | Oversized], bool]:
    """The messages ``args`` name (``path``, ``-`` for stdin, or ``--kafka``'s time range), and
    whether each is a whole message rather than a text line. ValueError for a bad range,
    OSError for a file that cannot be opened."""
    if args.kafka:
        rng = kafka_range.from_args(args, config)
        return kafka_range.read_range(rng, config, config.input.max_message_bytes), True
    if args.path is None:
        raise ValueError("give a file, '-' for stdin, or --kafka with --since/--until")
    src: IO[bytes] = (sys.stdin.buffer if args.path == "-"   # closed by the caller's stack
                      else stack.enter_context(Path(args.path).open("rb")))  # noqa: SIM115
    read = read_proto_messages if fmt == "otlp_proto" else read_lines
    return (read(open_traces(src, args.path), config.input.max_message_bytes),
            fmt == "otlp_proto")


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config, "replay")
    if config is None:
        return 2
    fmt = args.format or config.input.format
    try:
        decoder = decoder_for(fmt, config.input.otlp)
    except ConfigError as e:
        print(f"detector replay: {e}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        try:
            lines, binary = source_lines(args, config, fmt, stack)
            out: IO[bytes] = (stack.enter_context(Path(args.alerts_out).open("wb"))
                              if args.alerts_out else sys.stdout.buffer)
            dlq = (stack.enter_context(Path(args.dead_letter).open("wb"))
                   if args.dead_letter else None)
            scored = (stack.enter_context(Path(args.scores_out).open("wb"))
                      if args.scores_out else None)
        except OSError as e:
            print(f"detector replay: {e.filename}: {e.strerror}", file=sys.stderr)
            return 2
        except TraceFileError as e:
            print(f"detector replay: {args.path}: {e}", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"detector replay: {e}", file=sys.stderr)
            return 2
        sink = JsonlSink(out)

        def score(rec: dict[str, Any]) -> None:
            if scored is not None:
                scored.write(orjson.dumps(rec) + b"\n")

        try:
            summary = replay(lines, config, sink.emit, dead_letter=dlq,
                             progress=None if args.quiet else sys.stderr,
                             scores=score if scored else None, decoder=decoder,
                             binary=binary)
        except (TraceFileError, kafka_range.KafkaRangeError) as e:
            print(f"detector replay: {args.path or args.topic}: {e}", file=sys.stderr)
            return 2
        finally:
            sink.flush()
    if not args.quiet:
        print(summary.table(), file=sys.stderr)
    return 0
