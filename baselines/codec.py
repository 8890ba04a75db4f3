"""(De)serialise baseline state for changelog-backed tables.

Baselines are pickled (river's statistics pickle to a few dozen bytes of state), and loaded
with an unpickler that only admits the baseline classes and river's statistics: a changelog
topic is input like any other, and a plain ``pickle.loads`` of it would run arbitrary code.

>>> from baselines.rate import RateBaseline
>>> b = RateBaseline(0.1, 0.01); b.learn_one(3, 50)
>>> c = loads(dumps(b)); c.expected() == b.expected(), c.n
(True, 1)
>>> loads(b"cos\\nsystem\\n(S'true'\\ntR.")
Traceback (most recent call last):
...
_pickle.UnpicklingError: refusing to load os.system
"""

from __future__ import annotations

import io
import pickle
from typing import Any

__all__ = ["dumps", "loads"]

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
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def dumps(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=5)


def loads(data: bytes) -> Any:
    return _Restricted(io.BytesIO(data)).load()
