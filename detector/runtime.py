"""What every entry point does first: tune the garbage collector for the hot path, and load
the config or report why not, the same way for every command."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from detector.config import Config, ConfigError, load_config

__all__ = ["load_or_report", "tune_gc"]

log = logging.getLogger("detector.config")


def tune_gc() -> None:
    """The hot path allocates many short-lived tuples (cohort keys, evidence); with the
    default threshold of 700 allocations the young generation is scanned every few events.
    A larger first threshold makes replay faster (bench/replay.py); long-lived state is
    unaffected."""
    gc.set_threshold(50_000, 50, 100)


def load_or_report(path: str | Path | None, command: str) -> Config | None:
    """The config at ``path`` (None: the packaged default), or None after logging an error
    that names the command, the dotted key and the problem."""
    try:
        return load_config(path)
    except ConfigError as e:
        log.error("detector %s: config error: %s", command, e)
        return None
