"""`detector run | replay | simulate | demo | evaluate | backtest | incident | check-config`.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so `replay` never
pays for importing Faust.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from detector.runtime import load_or_report, tune_gc

__all__ = ["main"]

COMMANDS = {
    "run": ("detector.stream.app", "run the streaming worker on Kafka"),
    "replay": ("detector.lab.replay", "run the detector over a recorded JSON Lines file"),
    "simulate": ("detector.lab.simulate", "write synthetic traffic with labelled incidents"),
    "demo": ("detector.lab.demo", "embedded broker + worker + simulated incidents, live"),
    "evaluate": ("detector.lab.evaluate", "score alerts against incident labels"),
    "backtest": ("detector.lab.backtest", "what a config (or two, or a sweep) would have paged: "
                 "an HTML report with plots"),
    "incident": ("detector.lab.incident", "a notification draft and a postmortem skeleton "
                 "for one alert, from a file of alerts or the alerts topic"),
    "check-config": ("detector.cli", "validate a config file"),
}


def _check_add(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="config file (default: the packaged default)")


def _check_run(args: argparse.Namespace) -> int:
    from detector.config import config_hash

    cfg = load_or_report(args.file, "check-config")
    if cfg is None:
        return 2
    enabled = sum(1 for _ in _enabled(cfg))
    print(f"{args.file or 'default config'}: ok ({len(cfg.cohorts.levels)} cohort levels, "
          f"{enabled} windowed signals, {len(cfg.severity)} severity rules, "
          f"hash {config_hash(cfg)})")
    return 0


def _enabled(cfg: object) -> list[str]:
    from detector.core.signals import layout_of

    return [s.name for s in layout_of(cfg).signals  # type: ignore[arg-type]
            if cfg.signal(s.name).enabled]  # type: ignore[attr-defined]


def _parser(command: str | None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (for its arguments)."""
    p = argparse.ArgumentParser(
        prog="detector",
        description="Streaming detector for AI model and agent misbehaviour.",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if name == "check-config":
            _check_add(sp)
        elif name == command:
            importlib.import_module(module).add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    args = _parser(command).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(message)s")
    # The Kafka client narrates every metadata refresh at INFO; the demo's table is the point.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.root.level))
    tune_gc()
    if args.command == "check-config":
        return _check_run(args)
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
