"""Trace files: reading them with a bound on line length (plain or gzip), and writing
simulated traffic the way producers really write it: RFC 3339 and epoch timestamps, a few
JSON-array batches, a few events carrying prompt text the detector must drop, and a few counted
malformed lines the detector must dead-letter. Fields come in the contract's order, as a
producer built from the contract writes them (other fields after).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import time
import zlib
from collections.abc import Iterator
from typing import IO, Any, Final, NamedTuple

import orjson

from detector.core.events import TraceEvent

__all__ = ["Oversized", "TraceFileError", "TraceWriter", "open_traces", "read_lines",
           "read_proto_messages"]

_GZIP: Final = b"\x1f\x8b"
#: Formats recognised by their magic bytes and refused by name (decompress them first).
_REFUSED: Final = ((b"\x28\xb5\x2f\xfd", "zstd"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"),
                   (b"\x04\x22\x4d\x18", "lz4"), (b"PK\x03\x04", "zip"),
                   (b"\xff\x06\x00\x00sNaPpY", "snappy"))
_SNIFF: Final = 6
_CHUNK: Final = 1 << 18


class TraceFileError(Exception):
    """Input that is not a stream of trace lines we can read (a compressed format we refuse,
    a corrupt or truncated gzip stream)."""


class Oversized(NamedTuple):
    """A line over the limit, skipped without being held: its length and SHA-256 (of the line
    without its line ending), never its content."""

    size: int
    sha256: str


class _Prefixed(io.RawIOBase):
    """A stream with the bytes already read from it put back in front (sniffing a pipe)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.head:
            data, self.head = self.head[:len(b)], self.head[len(b):]
        else:
            data = self.rest.read1(len(b))  # type: ignore[attr-defined]  # a buffered stream
        b[:len(data)] = data
        return len(data)


def open_traces(src: IO[bytes], name: str = "") -> IO[bytes]:
    """``src`` ready for :func:`read_lines`: gzip (by its magic bytes, or a ``.gz`` name) is
    read transparently; another compressed format is refused, naming it."""
    if src.seekable():
        pos = src.tell()
        head = src.read(_SNIFF)
        src.seek(pos)
    else:
        head = src.read(_SNIFF)
        src = io.BufferedReader(_Prefixed(head, src), _CHUNK)
    if head.startswith(_GZIP) or name.endswith(".gz"):
        return gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[return-value]  # reads as one
    for magic, fmt in _REFUSED:
        if head.startswith(magic):
            raise TraceFileError(f"the input is {fmt}-compressed, which replay does not read; "
                                 f"decompress it first (plain JSON Lines or gzip)")
    return src


def read_lines(src: IO[bytes], max_bytes: int) -> Iterator[bytes | Oversized]:
    """Lines of ``src`` without their ``\\n``. A line longer than ``max_bytes`` (+1 for a
    ``\\r``) is given as :class:`Oversized`; one that does not end in the chunk being split is
    read past without being held: at most ``max_bytes`` and two chunks are ever held.

    >>> list(read_lines(io.BytesIO(b"ab\\n" + b"x" * 10 + b"\\r\\n\\ncd"), 4))  # doctest: +ELLIPSIS
    [b'ab', Oversized(size=10, sha256='fc11d6f2...'), b'', b'cd']
    """
    limit = max_bytes + 1
    read = getattr(src, "read1", src.read)   # what is there: a pipe is not waited on
    tail = b""          # the start of a line that a later chunk ends
    digest = None       # of an over-long line being read past
    size = 0
    try:
        while chunk := read(_CHUNK):
            if digest is not None:
                nl = chunk.find(b"\n")
                if nl < 0:
                    digest.update(chunk)
                    size += len(chunk)
                    continue
                end = chunk[:nl].removesuffix(b"\r")
                digest.update(end)
                yield Oversized(size + len(end), digest.hexdigest())
                digest, chunk = None, chunk[nl + 1:]
            lines = chunk.split(b"\n")
            lines[0] = tail + lines[0]
            tail = lines.pop()
            if max(map(len, lines), default=0) <= limit:   # the common case, in C
                yield from lines
            else:
                yield from (x if len(x) <= limit else _oversized(x) for x in lines)
            if len(tail) > limit:
                digest, size, tail = hashlib.sha256(tail), len(tail), b""
    except (OSError, EOFError, zlib.error) as e:   # gzip: corrupt, truncated, not gzip
        raise TraceFileError(f"cannot read the input: {e}") from e
    if digest is not None:
        yield Oversized(size, digest.hexdigest())
    elif tail:
        yield tail if len(tail) <= limit else _oversized(tail)


#: A serialised TracesData starts with this tag (field 1, length-delimited); as the first byte
#: of a 4-byte big-endian length it would mean a message of 160 MiB or more.
_TRACES_TAG: Final = b"\x0a"


def read_proto_messages(src: IO[bytes], max_bytes: int) -> Iterator[bytes | Oversized]:
    """OTLP protobuf messages of ``src``: the Collector's file exporter output with ``format:
    proto`` (each message after its length as 4 bytes, big-endian), or one bare message (a
    file that starts with TracesData's first tag). A message over ``max_bytes`` is given as
    :class:`Oversized`, read past without being held.

    >>> list(read_proto_messages(io.BytesIO(b"\\0\\0\\0\\x02\\x0a\\0" + b"\\0\\0\\0\\0"), 9))
    [b'\\n\\x00', b'']
    >>> list(read_proto_messages(io.BytesIO(b"\\x0a\\x00"), 9))
    [b'\\n\\x00']
    """
    try:
        head = src.read(1)
        if head == _TRACES_TAG:
            yield from _bounded_body(src, head, None, max_bytes)
            return
        while head:
            prefix = head + src.read(4 - len(head))
            if len(prefix) < 4:
                raise TraceFileError(f"truncated length prefix ({len(prefix)} of 4 bytes) at "
                                     "the end: not a length-delimited OTLP protobuf file")
            yield from _bounded_body(src, b"", int.from_bytes(prefix, "big"), max_bytes)
            head = src.read(1)
    except (OSError, EOFError, zlib.error) as e:   # gzip: corrupt, truncated, not gzip
        raise TraceFileError(f"cannot read the input: {e}") from e


def _bounded_body(src: IO[bytes], head: bytes, size: int | None,
                  max_bytes: int) -> Iterator[bytes | Oversized]:
    """One message of ``size`` bytes (None: to the end), or its length and digest if it is
    over ``max_bytes``."""
    want = max_bytes + 1 - len(head) if size is None else min(size, max_bytes + 1)
    data = head + src.read(want)
    if size is not None and len(data) < min(size, max_bytes + 1):
        raise TraceFileError(f"truncated message: {len(data)} of {size} bytes")
    if len(data) <= max_bytes and (size is None or len(data) == size):
        yield data
        return
    digest, n = hashlib.sha256(data), len(data)
    left = None if size is None else size - n
    while left is None or left > 0:
        chunk = src.read(_CHUNK if left is None else min(_CHUNK, left))
        if not chunk:
            if left:
                raise TraceFileError(f"truncated message: {n} of {size} bytes")
            break
        digest.update(chunk)
        n += len(chunk)
        left = None if left is None else left - len(chunk)
    yield Oversized(n, digest.hexdigest())


def _oversized(line: bytes) -> Oversized:
    # Less a "\r", as the decoder gets a line (replay strips the line ending).
    line = line.removesuffix(b"\r")
    return Oversized(len(line), hashlib.sha256(line).hexdigest())


BATCH_SHARE: Final = 0.03  # lines that are a JSON array of 2-20 events
MALFORMED_SHARE: Final = 0.001
EPOCH_TS_SHARE: Final = 0.2
TEXT_SHARE: Final = 0.01  # events carrying prompt/completion text the detector must drop
_LOREM: Final = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit",
                 "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "magna")
_RANK: Final = {f: i for i, f in enumerate(TraceEvent.__struct_fields__)}


def _ordered(ev: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(ev.items(), key=lambda kv: _RANK.get(kv[0], len(_RANK))))


class TraceWriter:
    """Formats timestamps, batches a few lines, injects counted malformed lines."""

    def __init__(self, fh: Any, rng: random.Random) -> None:
        self.fh, self.rng, self.rnd = fh, rng, rng.random
        self.buf: list[bytes] = []
        self.batch: list[dict[str, Any]] = []
        self.batch_size = 0
        self.events = self.lines = self.malformed = 0
        self._sec, self._prefix = -1, ""

    def put(self, ts_ms: int, ev: dict[str, Any]) -> None:
        rnd = self.rnd
        if rnd() < EPOCH_TS_SHARE:
            ev["ts"] = ts_ms / 1000
        else:
            sec = ts_ms // 1000
            # The contract's RFC 3339 (detector.core.timestamps.rfc3339), built from a prefix
            # made once a second: events arrive in time order, and this is the hot path.
            if sec != self._sec:
                self._sec = sec
                self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            ev["ts"] = f"{self._prefix}.{ts_ms % 1000:03d}Z"
        if rnd() < TEXT_SHARE:
            ev["prompt"] = " ".join(self.rng.choices(_LOREM, k=self.rng.randint(5, 40)))
            ev["completion"] = " ".join(self.rng.choices(_LOREM, k=self.rng.randint(3, 30)))
        self.events += 1
        if self.batch_size:
            self.batch.append(ev)
            if len(self.batch) == self.batch_size:
                self._flush_batch()
            return
        r = rnd()
        if r < BATCH_SHARE:
            self.batch, self.batch_size = [ev], self.rng.randint(2, 20)
            return
        if r < BATCH_SHARE + MALFORMED_SHARE:
            self._malformed(dict(ev))
        self.buf.append(orjson.dumps(_ordered(ev)) + b"\n")
        self.lines += 1
        if len(self.buf) >= 8192:
            self.fh.write(b"".join(self.buf))
            self.buf.clear()

    def _flush_batch(self) -> None:
        data = ([_ordered(e) for e in self.batch] if len(self.batch) > 1
                else _ordered(self.batch[0]))
        self.buf.append(orjson.dumps(data) + b"\n")
        self.lines += 1
        self.batch, self.batch_size = [], 0

    def _malformed(self, ev: dict[str, Any]) -> None:
        """A line that the decoder must reject as a whole (an extra line, not an event)."""
        kind = self.rng.choice(("truncated", "missing_ts", "wrong_type", "negative", "naive_ts"))
        if kind == "missing_ts":
            del ev["ts"]
        elif kind == "wrong_type":
            ev["latency_ms"] = "slow"
        elif kind == "negative":
            ev["output_tokens"] = -self.rng.randint(1, 500)
        elif kind == "naive_ts":  # an RFC 3339-looking time without its offset
            ts = ev["ts"]
            ev["ts"] = ts[:-1] if isinstance(ts, str) else \
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(ts)))
        data = orjson.dumps(_ordered(ev))
        if kind == "truncated":
            data = data[: self.rng.randint(10, len(data) - 2)]
        self.buf.append(data + b"\n")
        self.lines += 1
        self.malformed += 1

    def close(self) -> None:
        if self.batch:
            self._flush_batch()
        self.fh.write(b"".join(self.buf))
        self.buf.clear()
