"""`detector backtest`: what a config would have paged on recorded traffic, and why.

Traffic (a file, ``-`` for stdin, or a Kafka time range) is replayed with a config, and
optionally a second one (``--compare``) or several values of config keys (``--set
KEY=v1,v2,…``, a sweep); the result is one self-contained HTML report (:mod:`detector.lab.report`)
and, with ``--json``, the same content for scripts. Each plotted alert's (cohort, signal)
series comes from a second replay that keeps the scores of those pairs only (every pair of a
day is millions of records). Input that can be read once only (stdin, Kafka) is spooled to a
temporary file first.

Alerts of two configs are matched by signal, cohort and overlapping span, not by id (an id
fingerprints the start window, which a new threshold moves):

>>> a = AlertSpan("x", "refusal_rate", {"app": "a"}, "sev4", 0.0, 300.0, ())
>>> b = AlertSpan("y", "refusal_rate", {"app": "a"}, "sev2", 120.0, 600.0, ())
>>> d = diff([a], [b])
>>> [(c.base.id, c.new.id) for c in d.changed], d.new, d.lost
([('x', 'y')], [], [])

A sweep value is TOML (a string where it is not):

>>> parse_set("signals.refusal_rate.threshold=3,4.5,[1, 2],up")
('signals.refusal_rate.threshold', [3, 4.5, [1, 2], 'up'])
"""

from __future__ import annotations

import argparse
import itertools
import struct
import sys
import tempfile
import tomllib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import orjson

from detector.config import Config, ConfigError, parse_config
from detector.core.alert import alert_record
from detector.core.otlp import decoder_for
from detector.lab import kafka_range
from detector.lab.evaluate import SEVERITIES, evaluate, render
from detector.lab.evaluate import _time as parse_ts
from detector.lab.replay import replay, source_lines
from detector.lab.tracefile import Oversized, TraceFileError
from detector.runtime import load_or_report

__all__ = ["AlertSpan", "ConfigRun", "Diff", "Series", "SweepRow", "add_arguments",
           "apply_set", "diff", "parse_set", "run", "spans"]

_RANK = {s: n for n, s in enumerate(SEVERITIES)}


class Segment(NamedTuple):
    """A part of an alert's span at one severity (epoch seconds)."""

    start: float
    severity: str


class AlertSpan(NamedTuple):
    """One alert (all records of one id): its worst severity and its span in epoch seconds
    (``end`` is the end of the data while it never resolved)."""

    id: str
    signal: str
    cohort: dict[str, str]
    severity: str
    start: float
    end: float
    segments: tuple[Segment, ...]
    suspected_change: dict[str, Any] | None = None
    summary: str = ""


class Changed(NamedTuple):
    base: AlertSpan
    new: AlertSpan


class Diff(NamedTuple):
    new: list[AlertSpan]
    lost: list[AlertSpan]
    changed: list[Changed]
    same: int


class Series(NamedTuple):
    """One (cohort, signal)'s scored windows, for a plot."""

    window_start: list[str]
    observed: list[float]
    expected: list[float | None]
    score: list[float]
    threshold: list[float]


class ConfigRun(NamedTuple):
    name: str
    alerts: list[AlertSpan]
    records: list[dict[str, Any]]
    series: dict[str, Series]  # by alert id
    evaluation: dict[str, Any] | None


class SweepRow(NamedTuple):
    setting: dict[str, Any]
    by_severity: dict[str, int]
    recall: float | None
    false_alerts: int | None


# -- the source, readable several times ---------------------------------------------------


class _Spool:
    """Messages read once (stdin, Kafka) kept in a temporary file to be read again: each as
    its length (4 bytes) and bytes; an :class:`Oversized` one as length 0xFFFFFFFF, its size
    and its hash, never its bytes."""

    _BIG = 0xFFFFFFFF

    def __init__(self, messages: Iterable[bytes | Oversized]) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        w, pack = self.file.write, struct.Struct(">I").pack
        for m in messages:
            if isinstance(m, Oversized):
                w(pack(self._BIG) + struct.pack(">Q", m.size) + m.sha256.encode())
            else:
                w(pack(len(m)) + m)

    def read(self) -> Iterator[bytes | Oversized]:
        f = self.file
        f.seek(0)
        while head := f.read(4):
            (n,) = struct.unpack(">I", head)
            if n == self._BIG:
                (size,) = struct.unpack(">Q", f.read(8))
                yield Oversized(size, f.read(64).decode())
            else:
                yield f.read(n)

    def close(self) -> None:
        self.file.close()


# -- config variants ------------------------------------------------------------------------


def _value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(arg: str) -> tuple[str, list[Any]]:
    """``KEY=v1,v2,…`` as the key and its values (commas inside brackets do not split)."""
    key, eq, values = arg.partition("=")
    if not eq or not key.strip() or not values.strip():
        raise ValueError(f"--set {arg!r}: expected KEY=VALUE[,VALUE…]")
    parts, depth, cur = [], 0, ""
    for ch in values:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return key.strip(), [_value(p.strip()) for p in parts]


def apply_set(config: Config, settings: dict[str, Any]) -> Config:
    """``config`` with each dotted key (``severity[2].min_score`` indexes a list) set, checked
    as a config file is: ConfigError names the key and the problem."""
    data = msgspec.to_builtins(config)
    for key, value in settings.items():
        node: Any = data
        steps: list[str | int] = []
        for part in key.split("."):
            name, _, idx = part.partition("[")
            steps.append(name)
            if idx:
                try:
                    steps.append(int(idx.rstrip("]")))
                except ValueError:
                    raise ConfigError(f"{key}: {part!r} is not name[index]") from None
        for step, nxt in itertools.pairwise(steps):
            try:
                if isinstance(step, int):
                    node = node[step]
                else:
                    node = node.setdefault(step, [] if isinstance(nxt, int) else {})
            except (IndexError, TypeError, AttributeError):
                raise ConfigError(f"{key}: no such key") from None
        try:
            node[steps[-1]] = value
        except (IndexError, TypeError):
            raise ConfigError(f"{key}: no such key") from None
    return parse_config(data)


# -- alerts ---------------------------------------------------------------------------------


def _at(rec: dict[str, Any]) -> float:
    w = rec.get("window") or {}
    return parse_ts(w.get("start") or rec["starts_at"]).timestamp()


def spans(records: list[dict[str, Any]], data_end: float) -> list[AlertSpan]:
    """The alerts in ``records`` (alert JSON), one per id, in order of first record."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_id.setdefault(r["id"], []).append(r)
    out = []
    for aid, recs in by_id.items():
        segs: list[Segment] = []
        end = data_end
        for r in recs:
            if r.get("status") == "resolved":
                w = r.get("window") or {}
                end = parse_ts(r.get("ends_at") or w.get("end") or r["starts_at"]).timestamp()
            elif not segs or segs[-1].severity != r["severity"]:
                segs.append(Segment(_at(r), r["severity"]))
        start = segs[0].start if segs else _at(recs[0])
        worst = min(recs, key=lambda r: _RANK[r["severity"]])
        change = next((r["suspected_change"] for r in recs if r.get("suspected_change")), None)
        out.append(AlertSpan(aid, recs[0]["signal"], recs[0]["cohort"], worst["severity"],
                             start, max(end, start), tuple(segs), change,
                             worst.get("summary", "")))
    return out


def diff(base: list[AlertSpan], new: list[AlertSpan]) -> Diff:
    """Alerts ``new`` adds, loses and pages at another severity than ``base``."""
    pool: dict[tuple[str, tuple[tuple[str, str], ...]], list[AlertSpan]] = {}
    for a in base:
        pool.setdefault((a.signal, tuple(sorted(a.cohort.items()))), []).append(a)
    added, changed, same = [], [], 0
    for b in new:
        cands = pool.get((b.signal, tuple(sorted(b.cohort.items()))), [])
        hit = next((a for a in cands if a.start <= b.end and b.start <= a.end), None)
        if hit is None:
            added.append(b)
            continue
        cands.remove(hit)
        if hit.severity != b.severity:
            changed.append(Changed(hit, b))
        else:
            same += 1
    lost = [a for rest in pool.values() for a in rest]
    lost.sort(key=lambda a: a.start)
    return Diff(added, lost, changed, same)


def by_severity(alerts: list[AlertSpan]) -> dict[str, int]:
    n = Counter(a.severity for a in alerts)
    return {s: n[s] for s in SEVERITIES}


def by_signal(alerts: list[AlertSpan]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for a in alerts:
        row = out.setdefault(a.signal, dict.fromkeys(SEVERITIES, 0))
        row[a.severity] += 1
    return dict(sorted(out.items()))


# -- running --------------------------------------------------------------------------------


class _Source:
    """What ``args`` name, to replay as often as needed."""

    def __init__(self, args: argparse.Namespace, config: Config, stack: ExitStack) -> None:
        self.args, self.fmt = args, args.format or config.input.format
        self.spool: _Spool | None = None
        self.config = config
        self.is_file = not args.kafka and args.path not in (None, "-")
        lines, self.binary = source_lines(args, config, self.fmt, stack)
        if not self.is_file:
            self.spool = _Spool(lines)
            stack.callback(self.spool.close)

    def lines(self, stack: ExitStack) -> Iterable[bytes | Oversized]:
        if self.spool is not None:
            return self.spool.read()
        return source_lines(self.args, self.config, self.fmt, stack)[0]


def _replay(src: _Source, config: Config, pairs: set[Any] | None = None,
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    with ExitStack() as stack:
        replay(src.lines(stack), config, lambda a: records.append(alert_record(a)),
               scores=scores.append if pairs is not None else None, score_pairs=pairs,
               decoder=decoder_for(src.fmt, config.input.otlp), binary=src.binary)
    return records, scores


def _pair(config: Config, a: AlertSpan) -> tuple[int, tuple[str, ...], str] | None:
    for level, fields in enumerate(config.cohorts.levels):
        if set(fields) == set(a.cohort):
            return level, tuple(a.cohort[f] for f in fields), a.signal
    return None


def _data_end(records: list[dict[str, Any]]) -> float:
    ends = [parse_ts((r.get("window") or {}).get("end") or r["starts_at"]).timestamp()
            for r in records]
    return max(ends, default=0.0)


def run_config(name: str, src: _Source, config: Config, labels: dict[str, Any] | None,
               max_plots: int) -> ConfigRun:
    """Replay ``src`` with ``config``; a second pass for the plotted alerts' series."""
    records, _ = _replay(src, config)
    alerts = spans(records, _data_end(records))
    plotted = sorted(alerts, key=lambda a: (_RANK[a.severity], a.start))[:max_plots]
    wanted = {a.id: p for a in plotted if (p := _pair(config, a)) is not None}
    series: dict[str, Series] = {}
    if wanted:
        _, scores = _replay(src, config, set(wanted.values()))
        per: dict[Any, list[dict[str, Any]]] = {}
        for s in scores:
            level = s["level"]
            key = (level, tuple(s["cohort"][f] for f in config.cohorts.levels[level]),
                   s["signal"])
            per.setdefault(key, []).append(s)
        for aid, key in wanted.items():
            rows = per.get(key, [])
            if rows:
                series[aid] = Series([r["window_start"] for r in rows],
                                     [r["observed"] for r in rows],
                                     [r["expected"] for r in rows],
                                     [r["score"] for r in rows],
                                     [r["threshold"] for r in rows])
    evaluation = evaluate(labels, records) if labels is not None else None
    return ConfigRun(name, alerts, records, series, evaluation)


def sweep(src: _Source, config: Config, sets: list[tuple[str, list[Any]]],
          labels: dict[str, Any] | None) -> list[SweepRow]:
    """One replay per combination of the ``--set`` values (none without ``sets``)."""
    if not sets:
        return []
    rows = []
    keys = [k for k, _ in sets]
    for values in itertools.product(*(v for _, v in sets)):
        setting = dict(zip(keys, values, strict=True))
        cfg = apply_set(config, setting)
        records, _ = _replay(src, cfg)
        alerts = spans(records, _data_end(records))
        ev = evaluate(labels, records)["summary"] if labels is not None else None
        rows.append(SweepRow(setting, by_severity(alerts),
                             ev["recall"] if ev else None, ev["false_alerts"] if ev else None))
    return rows


def sweep_table(rows: list[SweepRow]) -> str:
    """The sweep as aligned text: one line per setting."""
    if not rows:
        return ""
    keys = list(rows[0].setting)
    head = [*keys, *SEVERITIES, "total"]
    labelled = rows[0].recall is not None
    if labelled:
        head += ["recall", "false alerts"]
    table = [head]
    for r in rows:
        line = [str(r.setting[k]) for k in keys] + [str(r.by_severity[s]) for s in SEVERITIES]
        line.append(str(sum(r.by_severity.values())))
        if labelled:
            line += ["-" if r.recall is None else f"{r.recall:.0%}", str(r.false_alerts)]
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True))
                     for row in table)


def to_json(runs: list[ConfigRun], d: Diff | None, rows: list[SweepRow]) -> dict[str, Any]:
    def alert(a: AlertSpan) -> dict[str, Any]:
        return {**a._asdict(), "segments": [s._asdict() for s in a.segments]}

    return {
        "configs": [{"name": r.name, "alerts_by_severity": by_severity(r.alerts),
                     "alerts_by_signal": by_signal(r.alerts),
                     "alerts": [alert(a) for a in r.alerts],
                     "evaluation": r.evaluation} for r in runs],
        "diff": None if d is None else {
            "new": [alert(a) for a in d.new], "lost": [alert(a) for a in d.lost],
            "changed": [{"base": alert(c.base), "new": alert(c.new)} for c in d.changed],
            "same": d.same},
        "sweep": [r._asdict() for r in rows],
    }


# -- the command ----------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="JSON Lines file of trace events; '-' for stdin; "
                   "none with --kafka")
    p.add_argument("--config", help="config file (default: the packaged config/detector.toml)")
    p.add_argument("--compare", metavar="CONFIG", help="a second config: the report shows what "
                   "it pages differently (new, lost, changed severity)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2,…",
                   help="sweep a config key over values (repeat for a grid): one replay per "
                   "value, one table")
    p.add_argument("--labels", type=Path, help="labels.json from simulate: evaluate's table, "
                   "and recall / false alerts in a sweep")
    p.add_argument("--out", type=Path, default=Path("backtest.html"),
                   help="the HTML report (default: backtest.html)")
    p.add_argument("--json", type=Path, help="also write the report's content here as JSON")
    p.add_argument("--max-plots", type=int, default=50,
                   help="plot at most this many alerts per config, most severe first")
    p.add_argument("--format", choices=["native", "otlp_proto", "otlp_json"],
                   help="what the input holds (default: the config's input.format)")
    kafka_range.add_arguments(p)


def _fail(msg: str) -> int:
    print(f"detector backtest: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config, "backtest")
    other = load_or_report(args.compare, "backtest") if args.compare else None
    if config is None or (args.compare and other is None):
        return 2
    try:
        sets = [parse_set(s) for s in args.set]
        labels = orjson.loads(args.labels.read_bytes()) if args.labels else None
    except (ValueError, OSError) as e:
        return _fail(str(e))
    with ExitStack() as stack:
        try:
            src = _Source(args, config, stack)
            runs = [run_config(args.config or "default config", src, config, labels,
                               args.max_plots)]
            if other is not None:
                runs.append(run_config(args.compare, src, other, labels, args.max_plots))
            rows = sweep(src, config, sets, labels)
        except ConfigError as e:
            return _fail(f"--set: {e}")
        except (TraceFileError, kafka_range.KafkaRangeError, ValueError) as e:
            return _fail(str(e))
        except OSError as e:
            return _fail(f"{e.filename}: {e.strerror}")
    d = diff(runs[0].alerts, runs[1].alerts) if len(runs) == 2 else None
    from detector.lab.report import render_html  # late: plotting is heavy

    try:
        args.out.write_text(render_html(runs, d, rows), "utf-8")
        if args.json:
            args.json.write_bytes(orjson.dumps(to_json(runs, d, rows),
                                               option=orjson.OPT_INDENT_2))
    except OSError as e:
        return _fail(f"{e.filename}: {e.strerror}")
    for r in runs:
        print(f"{r.name}: {len(r.alerts)} alerts "
              + ", ".join(f"{s} {n}" for s, n in by_severity(r.alerts).items()))
        if r.evaluation is not None and not rows:
            print(render(r.evaluation))
    if d is not None:
        print(f"diff: {len(d.new)} new, {len(d.lost)} lost, {len(d.changed)} changed severity, "
              f"{d.same} the same")
    if rows:
        print(sweep_table(rows))
    print(f"report: {args.out}" + (f", {args.json}" if args.json else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    _p = argparse.ArgumentParser(prog="python -m detector.lab.backtest", description=__doc__)
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))

