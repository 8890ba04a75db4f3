"""Baseline state as plain numbers, for changelog-backed tables (format v2), and v1 upgrades.

A baseline is written as a msgpack map ``{"@": tag, slot: value, ...}``: its class's tag in
:data:`REGISTRY` and its ``__slots__`` (every class in the MRO). Values are plain: numbers,
str, bool, None, lists; tuples, dicts and ``array('d')`` as maps tagged ``!tuple``, ``!dict``
and ``!array`` (the array as little-endian doubles); nested registered objects recursively;
river's ``EWMean`` and ``Mean`` by their numbers (tags ``!ewmean``, ``!mean``), rebuilt on
load through river's public constructor and ``update`` (exactly: the same state, bit for
bit). No module path or river internal is written, so a release may move a class or upgrade
river and still load its state.

Loading is by the registry alone (nothing is imported) and checked: an unknown tag, a value
whose kind differs from the class's fresh instance's (a number where it holds a number, one
of its registered classes or None where it holds an object, the same container type), a
non-finite number or nesting deeper than :data:`MAX_DEPTH` is a ``ValueError`` that says where.

Evolving a class: a slot the data lacks gets its value from ``cls._STATE_DEFAULTS`` (a
mapping slot -> value, or a callable taking the half-restored object) if the class declares
one, else a copy of the registry factory's fresh instance's value; a slot the class no longer
has is dropped. A new class is one line in :data:`REGISTRY` (tag -> a factory of a fresh
instance; tags are forever, the factory's arguments only give defaults and kinds).

>>> from baselines.rate import RateBaseline
>>> b = RateBaseline(0.1, 0.01); b.learn_one(3, 50)
>>> c = loads(dumps(b)); c.expected() == b.expected(), c.n
(True, 1)
>>> decode({"@": "nope"})
Traceback (most recent call last):
...
ValueError: baseline state: unknown tag 'nope'

v1 (pickled, e45989b and before) still loads, through an unpickler that admits only the
baseline classes and river's statistics, and is upgraded to the same checked objects:

>>> loads(b"\\x80\\x05cos\\nsystem\\n(S'true'\\ntR.")
Traceback (most recent call last):
...
baselines.codec.LegacyStateError: refusing to load os.system
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import sys
from array import array
from collections.abc import Callable
from typing import Any

import msgspec
from river import stats

from baselines.dispersion import Dispersion
from baselines.ewmean import WarmEWMean
from baselines.quantity import QuantityBaseline
from baselines.rate import RateBaseline
from baselines.volume import VolumeBaseline

__all__ = ["CLASSES", "MAX_DEPTH", "REGISTRY", "LegacyStateError", "decode", "dumps", "encode",
           "loads", "loads_v1"]

#: tag -> a factory of a fresh instance. Tags are written to the changelog: never rename one.
REGISTRY: dict[str, Callable[[], object]] = {
    "rate": lambda: RateBaseline(0.1, 0.01),
    "quantity": lambda: QuantityBaseline(0.1, 0.01),
    "volume": lambda: VolumeBaseline(0.1, 0.01, 24, 86400.0),
    "dispersion": lambda: Dispersion(0.1, 25.0),
    "warm_ewmean": lambda: WarmEWMean(0.1),
}
#: Baselines nest two or three deep; anything much deeper is not state this code wrote.
MAX_DEPTH = 16
_TAG = "@"
_EWMEAN = "!ewmean"
_MEAN = "!mean"


class LegacyStateError(ValueError, pickle.UnpicklingError):
    """v1 (pickled) state that cannot be loaded."""


class _Entry:
    __slots__ = ("cls", "defaults", "slots", "template")

    def __init__(self, factory: Callable[[], object]) -> None:
        self.template = factory()
        self.cls = type(self.template)
        self.slots = _slots(self.cls)
        self.defaults: dict[str, Any] = getattr(self.cls, "_STATE_DEFAULTS", {})


def _slots(cls: type) -> tuple[str, ...]:
    out: set[str] = set()
    for k in cls.__mro__:
        s = k.__dict__.get("__slots__", ())
        out.update((s,) if isinstance(s, str) else s)
    return tuple(sorted(out - {"__weakref__", "__dict__"}))


_ENTRIES = {tag: _Entry(f) for tag, f in REGISTRY.items()}
_TAG_OF = {e.cls: tag for tag, e in _ENTRIES.items()}
#: The registered classes.
CLASSES = tuple(_TAG_OF)
_OBJECTS = (*CLASSES, stats.EWMean, stats.Mean)


# -- encoding --------------------------------------------------------------------------------
def encode(obj: Any) -> Any:
    """``obj`` as plain msgpack-able values (see the module doc)."""
    return _enc(obj, 0)


def _enc(x: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"baseline state nests deeper than {MAX_DEPTH}")
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, float):
        return float(x)    # a subclass (numpy's) as a plain double
    t = type(x)
    if t is list:
        return [_enc(v, depth + 1) for v in x]
    if t is tuple:
        return {_TAG: "!tuple", "v": [_enc(v, depth + 1) for v in x]}
    if t is dict:
        return {_TAG: "!dict", "v": [[_enc(k, depth + 1), _enc(v, depth + 1)]
                                     for k, v in x.items()]}
    if t is array and x.typecode == "d":
        a = x if sys.byteorder == "little" else _swapped(x)
        return {_TAG: "!array", "v": a.tobytes()}
    if t is stats.EWMean:
        return {_TAG: _EWMEAN, "fading_factor": x.fading_factor,
                "mean": x.get() if _started(x) else None}
    if t is stats.Mean:
        return {_TAG: _MEAN, "n": x.n, "mean": x.get()}
    tag = _TAG_OF.get(t)
    if tag is None:
        raise TypeError(f"baseline state: {t.__module__}.{t.__qualname__} is not in "
                        "baselines.codec.REGISTRY and not a supported river statistic")
    out: dict[str, Any] = {_TAG: tag}
    for name in _ENTRIES[tag].slots:
        try:
            v = getattr(x, name)
        except AttributeError:   # unset (a v1 object from before the slot existed)
            continue
        out[name] = _enc(v, depth + 1)
    return out


def _started(m: stats.EWMean) -> bool:
    """Whether river's EWMean has seen a value: it starts at its first value, so a fresh
    one and one at exactly 0.0 differ only in their next update (probed on a copy)."""
    if m.get() != 0.0:
        return True
    probe = copy.deepcopy(m)
    probe.update(1.0)
    return probe.get() != 1.0 or m.fading_factor == 1.0


def _swapped(a: array) -> array:
    b = array(a.typecode, a)
    b.byteswap()
    return b


def dumps(obj: Any) -> bytes:
    """v2 bytes of one baseline."""
    return msgspec.msgpack.encode(encode(obj))


# -- decoding --------------------------------------------------------------------------------
def decode(value: Any) -> Any:
    """Rebuild what :func:`encode` wrote; ``ValueError`` (saying where) for anything else."""
    return _dec(value, 0, "")


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _finite(x: Any, where: str) -> float:
    if not _number(x) or not math.isfinite(x):
        raise ValueError(f"baseline state{where}: expected a finite number, got {_show(x)}")
    return x


def _show(x: Any) -> str:
    return type(x).__name__ if isinstance(x, dict | list | str | bytes) else repr(x)


def _dec(x: Any, depth: int, where: str) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"baseline state{where}: nests deeper than {MAX_DEPTH}")
    if x is None or isinstance(x, bool | str):
        return x
    if _number(x):
        return _finite(x, where)
    if isinstance(x, list):
        return [_dec(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(x)]
    if not isinstance(x, dict):
        raise ValueError(f"baseline state{where}: unexpected {type(x).__name__}")
    tag = x.get(_TAG)
    if not isinstance(tag, str):
        raise ValueError(f"baseline state{where}: a map without a tag")
    if tag == "!tuple":
        return tuple(_dec(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(_list(x, where)))
    if tag == "!dict":
        out = {}
        for i, kv in enumerate(_list(x, where)):
            if not isinstance(kv, list) or len(kv) != 2 or not isinstance(kv[0], str | int):
                raise ValueError(f"baseline state{where}[{i}]: not a [str, value] pair")
            out[kv[0]] = _dec(kv[1], depth + 1, f"{where}[{kv[0]!r}]")
        return out
    if tag == "!array":
        raw = x.get("v")
        if not isinstance(raw, bytes) or len(raw) % 8:
            raise ValueError(f"baseline state{where}: an array is not whole doubles")
        a = array("d", raw)
        if sys.byteorder != "little":
            a.byteswap()
        for v in a:
            _finite(v, where)
        return a
    if tag == _EWMEAN:
        ff = _finite(x.get("fading_factor"), f"{where}.fading_factor")
        if not 0.0 <= ff <= 1.0:
            raise ValueError(f"baseline state{where}.fading_factor: {ff} is not in [0, 1]")
        m = stats.EWMean(ff)
        if x.get("mean") is not None:
            m.update(_finite(x["mean"], f"{where}.mean"))   # river starts at its first value
        return m
    if tag == _MEAN:
        n = _finite(x.get("n"), f"{where}.n")
        mean = _finite(x.get("mean"), f"{where}.mean")
        if n < 0:
            raise ValueError(f"baseline state{where}.n: {n} is negative")
        s = stats.Mean()
        if n:
            s.update(mean, n)    # n = w, mean = 0 + (w / n) * mean: exact
        return s
    entry = _ENTRIES.get(tag)
    if entry is None:
        raise ValueError(f"baseline state{where}: unknown tag {tag!r}")
    obj = object.__new__(entry.cls)
    for name in entry.slots:
        w = f"{where}.{tag}.{name}"
        if name in x:
            v = _dec(x[name], depth + 1, w)
            _check_like(v, getattr(entry.template, name, None), w)
        elif name in entry.defaults:
            d = entry.defaults[name]
            v = d(obj) if callable(d) else copy.deepcopy(d)
        else:
            v = copy.deepcopy(getattr(entry.template, name))
        setattr(obj, name, v)
    return obj


def _list(x: dict[str, Any], where: str) -> list[Any]:
    v = x.get("v")
    if not isinstance(v, list):
        raise ValueError(f"baseline state{where}: {x[_TAG]} without a list")
    return v


def _check_like(v: Any, t: Any, where: str) -> None:
    """``v`` must be of the kind the class's fresh instance holds in that slot."""
    if t is None or isinstance(t, _OBJECTS):
        ok = v is None or (isinstance(v, _OBJECTS) and (t is None or type(v) is type(t)))
    elif _number(t):
        ok = _number(v)
    else:
        ok = type(v) is type(t)
        if ok and isinstance(t, tuple | list) and t and len({type(e) for e in t}) == 1:
            for i, e in enumerate(v):   # a homogeneous container stays so (a pair of means)
                _check_like(e, t[0], f"{where}[{i}]")
    if not ok:
        raise ValueError(f"baseline state{where}: expected {type(t).__name__}, "
                         f"got {type(v).__name__}")


def loads(data: bytes) -> Any:
    """One baseline from v2 bytes, or from v1 (pickle) bytes, upgraded."""
    if data[:1] == b"\x80" and len(data) > 1:    # a pickle's PROTO; a v2 map is never 0x80 + more
        return loads_v1(data)
    try:
        value = msgspec.msgpack.decode(data)
    except (msgspec.DecodeError, RecursionError) as e:
        raise ValueError(f"baseline state: {e}") from None
    return decode(value)


# -- v1 --------------------------------------------------------------------------------------
_ALLOWED = {
    ("baselines.rate", "RateBaseline"),
    ("baselines.quantity", "QuantityBaseline"),
    ("baselines.volume", "VolumeBaseline"),
    ("baselines.dispersion", "Dispersion"),
    ("baselines.ewmean", "WarmEWMean"),
    ("river.stats.ewmean", "EWMean"),
    ("river.stats.mean", "Mean"),
    ("river._river_rust.stats", "RsEWMean"),
    ("copyreg", "__newobj__"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("array", "array"),
    ("array", "_array_reconstructor"),
}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise LegacyStateError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def loads_v1(data: bytes) -> Any:
    """A v1 (pickled) baseline, upgraded through v2: the same checks, defaults for slots
    added since, the current river classes."""
    try:
        obj = _Restricted(io.BytesIO(data)).load()
        value = encode(obj)
    except LegacyStateError:
        raise
    except Exception as e:   # any failure of a hostile pickle is bad input
        raise LegacyStateError(f"v1 baseline state: {type(e).__name__}: {e}") from None
    return decode(value)
