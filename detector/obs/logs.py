"""Structured logs: one JSON object per line, and no flood when the broker is away.

While a broker is unreachable, the Kafka client logs the same few warnings dozens of times a
second (seen: 1,200 "Unable connect" lines in 20 s). :class:`RepeatFilter` lets the first of
each passes and then one per ``every`` seconds, carrying how many it held back.

>>> f = RepeatFilter(every=10.0, clock=iter([0.0, 1.0, 2.0, 12.0]).__next__)
>>> recs = [logging.makeLogRecord({"name": "aiokafka", "msg": "Unable connect to %s",
...                                "args": (i,), "levelno": logging.ERROR}) for i in range(4)]
>>> [f.filter(r) for r in recs], getattr(recs[3], "repeats", None)
([True, False, False, True], 2)
>>> own = logging.makeLogRecord({"name": "detector.stream.app", "msg": "{}"})
>>> all(f.filter(own) for _ in range(3))   # the detector's own events always pass
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "RepeatFilter", "logging_config"]

#: Loggers whose repeats are held back (the detector's own events are never dropped).
NOISY = ("aiokafka", "kafka", "faust", "mode")
MAX_KEYS = 1024   # distinct message templates remembered; past this the table starts over


class RepeatFilter(logging.Filter):
    """Passes a client-library record if its (logger, template) has not passed in ``every``
    seconds; the record that passes after a quiet spell says how many it stands for."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every, self.clock = every, clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(NOISY):
            return True
        key = (record.name, str(record.msg)[:200])
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        if len(self._last) >= MAX_KEYS:
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.repeats = held
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a message that is itself a JSON object is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name}
        if msg.startswith("{") and msg.endswith("}"):
            try:
                out.update(orjson.loads(msg))
            except orjson.JSONDecodeError:
                out["msg"] = msg
        else:
            out["msg"] = msg.strip()
        repeats = getattr(record, "repeats", None)
        if repeats:
            out["repeats_held_back"] = repeats
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exc"] = self.formatException(record.exc_info)[-2000:]
        return orjson.dumps(out, default=str).decode()


def logging_config(level: str = "info") -> dict[str, Any]:
    """dictConfig for JSON lines on stderr (also handed to Faust's worker)."""
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter}},
            "filters": {"repeats": {"()": RepeatFilter}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                    "filters": ["repeats"], "stream": "ext://sys.stderr"}},
            "root": {"level": level.upper(), "handlers": ["stderr"]},
            "loggers": {"aiokafka": {"level": "WARNING"}}}
