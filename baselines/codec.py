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
mapping slot -> value, or a callable taking the object restored so far, slots in sorted
order) if the class declares one, else a copy of the registry factory's fresh instance's
value: declare a default for a new slot whose value depends on constructor arguments (a
fading factor), since the factory's arguments are not the config's. A slot the class no
longer has is dropped. A new class is one line in :data:`REGISTRY` (tag -> a factory of a fresh
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
import pickle
import sys
from array import array
from collections.abc import Callable
from typing import Any

import msgspec
from river import stats

from baselines.dispersion import Dispersion
from baselines.ewmean import WarmEWMean
from baselines.period import PeriodFinder
from baselines.quantity import TWIN as QUANTITY_TWIN
from baselines.quantity import QuantityBaseline
from baselines.quantity import as_reference as quantity_reference
from baselines.rate import TWIN, RateBaseline, as_reference
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
    "period": lambda: PeriodFinder(60.0),
}
#: Baselines nest two or three deep; anything much deeper is not state this code wrote.
MAX_DEPTH = 16
_TAG = "@"
_EWMEAN = "!ewmean"
_MEAN = "!mean"


class LegacyStateError(ValueError, pickle.UnpicklingError):
    """v1 (pickled) state that cannot be loaded."""


class _Entry:
    __slots__ = ("cls", "defaults", "numbers", "slots", "template")

    def __init__(self, factory: Callable[[], object]) -> None:
        self.template = factory()
        self.cls = type(self.template)
        self.slots = _slots(self.cls)
        self.defaults: dict[str, Any] = getattr(self.cls, "_STATE_DEFAULTS", {})
        # Slots holding a number: most of the state, read without the general walk.
        self.numbers = frozenset(n for n in self.slots
                                 if type(getattr(self.template, n, None)) in (int, float))


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
_OBJECT_TYPES = frozenset((*CLASSES, stats.EWMean, stats.Mean))


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
    if t is TWIN and TWIN is not None:
        x, t = as_reference(x), RateBaseline   # written as the reference's state, the same bytes
    elif t is QUANTITY_TWIN and QUANTITY_TWIN is not None:
        x, t = quantity_reference(x), QuantityBaseline
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
class _Bad(ValueError):
    """A bad value; each level on the way out adds where it was (cheap when nothing is bad)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg
        self.path: list[str] = []


def decode(value: Any) -> Any:
    """Rebuild what :func:`encode` wrote; ``ValueError`` (saying where) for anything else."""
    try:
        return _dec(value, 0)
    except _Bad as e:
        raise ValueError(f"baseline state{''.join(reversed(e.path))}: {e.msg}") from None


def _at(e: _Bad, where: str) -> _Bad:
    e.path.append(where)
    return e


def _finite(x: Any) -> float:
    t = type(x)
    if (t is float and x - x == 0.0) or t is int:    # x - x is nan for inf and nan
        return x
    raise _Bad(f"expected a finite number, got {_show(x)}")


def _show(x: Any) -> str:
    return type(x).__name__ if isinstance(x, dict | list | str | bytes) else repr(x)


def _dec(x: Any, depth: int) -> Any:
    t = type(x)
    if t is float or t is int:
        return _finite(x)
    if x is None or t is bool or t is str:
        return x
    if depth >= MAX_DEPTH:
        raise _Bad(f"nests deeper than {MAX_DEPTH}")
    if t is list:
        return _items(x, depth)
    if t is not dict:
        raise _Bad(f"unexpected {t.__name__}")
    tag = x.get(_TAG)
    if type(tag) is not str:
        raise _Bad("a map without a tag")
    if tag[0] == "!":
        return _builtin(tag, x, depth)
    entry = _ENTRIES.get(tag)
    if entry is None:
        raise _Bad(f"unknown tag {tag!r}")
    obj = object.__new__(entry.cls)
    template = entry.template
    numbers = entry.numbers
    for name in entry.slots:
        if name in x:
            v = x[name]
            tv = type(v)
            if name in numbers and ((tv is float and v - v == 0.0) or tv is int):
                setattr(obj, name, v)
                continue
            try:
                v = _dec(x[name], depth + 1)
                _check_like(v, getattr(template, name, None))
            except _Bad as e:
                raise _at(e, f".{tag}.{name}") from None
        elif name in entry.defaults:
            d = entry.defaults[name]
            v = d(obj) if callable(d) else copy.deepcopy(d)
        elif hasattr(template, name):
            v = copy.deepcopy(getattr(template, name))
        else:
            continue   # unset in a fresh instance too
        setattr(obj, name, v)
    return obj


def _items(xs: list[Any], depth: int) -> list[Any]:
    out = []
    for i, v in enumerate(xs):
        try:
            out.append(_dec(v, depth + 1))
        except _Bad as e:
            raise _at(e, f"[{i}]") from None
    return out


def _builtin(tag: str, x: dict[str, Any], depth: int) -> Any:
    v = x.get("v")
    if tag == "!tuple" and type(v) is list:
        return tuple(_items(v, depth))
    if tag == "!dict" and type(v) is list:
        out = {}
        for i, kv in enumerate(v):
            if type(kv) is not list or len(kv) != 2 or type(kv[0]) not in (str, int):
                raise _at(_Bad("not a [str, value] pair"), f"[{i}]")
            try:
                out[kv[0]] = _dec(kv[1], depth + 1)
            except _Bad as e:
                raise _at(e, f"[{kv[0]!r}]") from None
        return out
    if tag == "!array":
        if type(v) is not bytes or len(v) % 8:
            raise _Bad("an array is not whole doubles")
        a = array("d", v)
        if sys.byteorder != "little":
            a.byteswap()
        for f in a:
            _finite(f)
        return a
    if tag == _EWMEAN:
        ff = _field(x, "fading_factor")
        if not 0.0 <= ff <= 1.0:
            raise _at(_Bad(f"{ff} is not in [0, 1]"), ".fading_factor")
        m = stats.EWMean(ff)
        if x.get("mean") is not None:
            m.update(_field(x, "mean"))   # river's EWMean starts at its first value
        return m
    if tag == _MEAN:
        n = _field(x, "n")
        mean = _field(x, "mean")
        if n < 0:
            raise _at(_Bad(f"{n} is negative"), ".n")
        s = stats.Mean()
        if n:
            s.update(mean, n)    # n = w, mean = 0 + (w / n) * mean: exact
        return s
    raise _Bad(f"unknown tag {tag!r}" if tag not in _BUILTINS else f"{tag} without a list")


_BUILTINS = {"!tuple", "!dict", "!array", _EWMEAN, _MEAN}


def _field(x: dict[str, Any], name: str) -> float:
    try:
        return _finite(x.get(name))
    except _Bad as e:
        raise _at(e, f".{name}") from None


def _check_like(v: Any, t: Any) -> None:
    """``v`` must be of the kind the class's fresh instance holds in that slot."""
    tt, tv = type(t), type(v)
    if t is None or tt in _OBJECT_TYPES:
        ok = v is None or (tv in _OBJECT_TYPES and (t is None or tv is tt))
    elif tt is int or tt is float:
        ok = tv is int or tv is float
    else:
        ok = tv is tt
        if ok and (tt is tuple or tt is list) and t and len({type(e) for e in t}) == 1:
            for i, e in enumerate(v):   # a homogeneous container stays so (a pair of means)
                try:
                    _check_like(e, t[0])
                except _Bad as bad:
                    raise _at(bad, f"[{i}]") from None
    if not ok:
        raise _Bad(f"expected {tt.__name__}, got {tv.__name__}")


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


class _V1Quantity:
    """QuantityBaseline as e45989b pickled it (a fast and a slow WarmEWMean of window means,
    one of within-window variance, and two excess between-window variances)."""

    __slots__ = ("_between_fast", "_between_slow", "_fast", "_mf", "_ms", "_slow", "_w",
                 "_within", "n")
    # Filled in by unpickling (river's and our EWMean objects, floats): never constructed here.
    _fast: Any
    _slow: Any
    _within: Any
    _between_fast: float
    _between_slow: float
    n: int

    def upgrade(self) -> QuantityBaseline:
        """The same levels, spreads and count in today's QuantityBaseline."""
        new = QuantityBaseline(self._fast.fading_factor, self._slow.fading_factor)
        new._lf = new._prev = float(self._fast.get())
        new._ls = float(self._slow.get())
        new._vf = float(self._between_fast)
        new._vs = new._vn = float(self._between_slow)
        new._w = float(self._within.get())
        new.n = int(self.n)
        return new


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise LegacyStateError(f"refusing to load {module}.{name}")
        if (module, name) == ("baselines.quantity", "QuantityBaseline"):
            return _V1Quantity   # its slots have changed since: upgraded after loading
        return super().find_class(module, name)


def loads_v1(data: bytes) -> Any:
    """A v1 (pickled) baseline, upgraded through v2: the same checks, defaults for slots
    added since, the current river classes."""
    try:
        obj = _Restricted(io.BytesIO(data)).load()
        if isinstance(obj, _V1Quantity):
            obj = obj.upgrade()
        value = encode(obj)
    except LegacyStateError:
        raise
    except Exception as e:   # any failure of a hostile pickle is bad input
        raise LegacyStateError(f"v1 baseline state: {type(e).__name__}: {e}") from None
    return decode(value)
