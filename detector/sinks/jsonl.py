"""Alerts as JSON Lines (one alert object per line, per shared/schema/alert.schema.json)."""

from __future__ import annotations

from typing import IO, Any

import orjson

__all__ = ["JsonlSink", "dumps_alert"]


def dumps_alert(alert: dict[str, Any]) -> bytes:
    """The canonical bytes of an alert: same alert, same bytes (replay is byte-identical)."""
    return orjson.dumps(alert) + b"\n"


class JsonlSink:
    def __init__(self, out: IO[bytes], *, close_out: bool = False) -> None:
        self.out = out
        self.close_out = close_out   # whether close() closes the stream (else the caller does)
        self.sent = 0

    def emit(self, alert: dict[str, Any]) -> None:
        self.out.write(dumps_alert(alert))
        self.sent += 1

    def flush(self, timeout: float = 0.0) -> bool:
        self.out.flush()
        return True

    def close(self) -> None:
        self.out.flush()
        if self.close_out:
            self.out.close()
