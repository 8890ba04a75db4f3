"""Config hot reload for `detector run`: on SIGHUP, or when the file changes (polled), read and
validate the config again and hand what may change to the worker, or refuse it whole.

What may change is decided by :func:`detector.core.reload.plan_reload`; this module is the
edge around it: reading the file, the log lines, the metrics, and the poll. Every reload ends
in one of :data:`~detector.obs.metrics.RELOAD_RESULTS`, counted and logged:

* ``invalid``: the file does not load or validate; the error names the dotted key.
* ``refused``: a key that needs a restart changed; the line names every such key.
* ``unchanged``: the settings in effect are the same (comments, layout, defaults spelt out).
* ``applied``: the worker took the new config (``apply``), from its next window on.

In the refused and invalid cases nothing is applied: the worker runs on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from detector.config import Config, ConfigError, config_hash, load_config
from detector.core.reload import plan_reload
from detector.obs.metrics import Metrics

__all__ = ["ConfigReloader"]

log = logging.getLogger("detector.config")

#: Shortest poll interval of --watch-config: a stat() per tick, but no busier than this.
MIN_WATCH_S = 0.2


def _jlog(level: int, event: str, **fields: Any) -> None:
    log.log(level, orjson.dumps({"event": event, **fields}, default=str).decode())


class ConfigReloader:
    """Reloads the config at ``path`` (None: the packaged default) for a worker running on
    ``cfg``; ``apply`` is called with an accepted config, at a point where the worker is
    between batches (the event loop's thread, as SIGHUP's handler and the poll run)."""

    def __init__(self, path: str | Path | None, cfg: Config, apply: Callable[[Config], None],
                 metrics: Metrics) -> None:
        self.path = path
        self.cfg = cfg
        self.apply = apply
        self.metrics = metrics
        self.hash = config_hash(cfg)
        metrics.config.info({"hash": self.hash})
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self, trigger: str) -> str:
        """Read, validate and plan; apply if every change may be applied. Returns the result
        (one of RELOAD_RESULTS), counted and logged."""
        where = str(self.path or "default config")
        self._seen = self._stamp()   # the watch need not reload what this one reads
        try:
            new = load_config(self.path)
        except ConfigError as e:
            return self._done("invalid", logging.ERROR, trigger, path=where, error=str(e),
                              message=f"config not reloaded: {e}; running on as before")
        plan = plan_reload(self.cfg, new)
        if not plan.ok:
            return self._done(
                "refused", logging.ERROR, trigger, path=where, restart_keys=list(plan.refused),
                changed=list(plan.changed),
                message=f"config not reloaded: {', '.join(plan.refused)} "
                        "cannot change on a running worker (restart it to apply); "
                        "running on as before")
        if not plan.changed:
            return self._done("unchanged", logging.INFO, trigger, path=where)
        try:
            self.apply(new)
        except Exception as e:   # a bug in applying must not stop the stream; say so
            return self._done("refused", logging.ERROR, trigger, path=where, error=repr(e),
                              message="config not reloaded: applying it failed")
        old_hash, self.cfg, self.hash = self.hash, new, config_hash(new)
        self.metrics.config.info({"hash": self.hash})
        return self._done("applied", logging.INFO, trigger, path=where,
                          changed=list(plan.changed), hash=self.hash, previous_hash=old_hash)

    def _done(self, result: str, level: int, trigger: str, **fields: Any) -> str:
        self.metrics.config_reloads.labels(result=result).inc()
        _jlog(level, f"config_reload_{result}", trigger=trigger, **fields)
        return result

    def changed_on_disk(self) -> bool:
        """Whether the file's mtime, size or inode moved since the last look (an editor's
        atomic rename too). A file missing for the moment is not a change."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        self._seen = stamp
        return True

    async def watch(self, every: float, stopping: asyncio.Event) -> None:
        """Poll the file's stamp every ``every`` seconds until ``stopping``; reload on a
        change. A file caught half-written is invalid once, then applied on the next tick."""
        every = max(every, MIN_WATCH_S)
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), every)
            if not stopping.is_set() and self.changed_on_disk():
                self.reload("file")
