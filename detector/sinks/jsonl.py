"""Alerts as JSON Lines (one alert object per line, per shared/schema/alert.schema.json)."""

from __future__ import annotations

from typing import IO

from detector.core.alert import Alert, encode_alert

__all__ = ["JsonlSink"]


class JsonlSink:
    def __init__(self, out: IO[bytes], *, close_out: bool = False) -> None:
        self.out = out
        self.close_out = close_out   # whether close() closes the stream (else the caller does)
        self.sent = 0

    def emit(self, alert: Alert) -> None:
        self.out.write(encode_alert(alert) + b"\n")
        self.sent += 1

    def flush(self, timeout: float = 0.0) -> bool:
        self.out.flush()
        return True

    def close(self) -> None:
        self.out.flush()
        if self.close_out:
            self.out.close()
