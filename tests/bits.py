"""Bit-for-bit equality for the C twins' tests: floats compared by their bits, so -0.0 and
0.0, or two NaNs, are told apart where ``==`` would not.

>>> same(0.0, -0.0), same([1.0, (2.0,)], [1.0, (2.0,)]), same(1, 1.0)
(False, True, False)
"""

from __future__ import annotations

import struct


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def same(a: object, b: object) -> bool:
    """Equal, floats compared by their bits, lists and tuples item by item."""
    if isinstance(a, float) and isinstance(b, float):
        return bits(a) == bits(b)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b
