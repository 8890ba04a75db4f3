"""msgpack for a struct whose wire form changed: today's form, and the form an older worker
wrote (state, envelopes and held hits in flight across an upgrade), read and upgraded.

>>> import msgspec
>>> class Old(msgspec.Struct, array_like=True):
...     n: str
...     def upgrade(self) -> "New":
...         return New(int(self.n))
>>> class New(msgspec.Struct, array_like=True):
...     n: int
>>> w = Wire(New, Old)
>>> w.decode(w.encode(New(3))), w.decode(msgspec.msgpack.encode(Old("4")))
(New(n=3), New(n=4))
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

import msgspec

__all__ = ["Wire"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Legacy(Protocol[T_co]):
    def upgrade(self) -> T_co: ...


class Wire(Generic[T]):
    """Encodes ``current``; decodes it, or else ``legacy`` upgraded to it."""

    __slots__ = ("_dec", "_enc", "_legacy")

    def __init__(self, current: type[T], legacy: type[Legacy[T]]) -> None:
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(current)
        self._legacy = msgspec.msgpack.Decoder(legacy)

    def encode(self, value: T) -> bytes:
        return self._enc.encode(value)

    def decode(self, data: bytes) -> T:
        try:
            return self._dec.decode(data)
        except msgspec.ValidationError:
            return self._legacy.decode(data).upgrade()
