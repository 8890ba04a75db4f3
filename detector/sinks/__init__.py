"""Alert sinks: where alert emissions go. One small module each; all share this protocol."""

from __future__ import annotations

from typing import Protocol

from detector.core.alert import Alert

__all__ = ["Sink"]


class Sink(Protocol):
    def emit(self, alert: Alert) -> None:
        """Hand over one alert emission; must not block the stream."""

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for everything emitted to be delivered."""

    def close(self) -> None: ...
