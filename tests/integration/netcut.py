"""A TCP link to the broker that a test can cut and restore.

Cutting closes the listener and resets every open connection: what clients see when a broker
restarts or a network partition drops their connections (connection refused, then reset),
while the broker process keeps its topics, offsets and changelogs. A restart of the embedded
broker cannot show this: its only local storage is memory, so a restarted broker is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["Link"]


class Link:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target`` in a background event loop."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0   # accepted so far

    def _run(self, coro: object, timeout: float = 10.0) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> Link:
        if not self._thread.is_alive():
            self._thread.start()
        self._run(self._listen())
        return self

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        self._run(self._cut())

    def restore(self) -> None:
        self._run(self._listen())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()   # RST, as a dropped connection
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_w}
        self._writers |= pair
        await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        self._writers -= pair


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(1 << 16):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        dst.transport.abort()
