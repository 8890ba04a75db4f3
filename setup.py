"""Everything but the C extension is in pyproject.toml.

Stage 1's counting in C (detector/core/_tally.c) is optional: without a compiler the package
installs anyway and counts in Python, with the same results at a lower speed. The same holds
for the otlp_proto decoder's span mapping (detector/core/_spans.c), a decoded batch's late
checks (detector/core/_finish.c), the scan of which messages may be decoded joined
(detector/core/_shapes.c), and for the rate baseline's
twin (baselines/_rate.c) and the quantity baseline's (baselines/_quantity.c).
"""

from setuptools import Extension, setup

# These include _slots.h (slot offsets of msgspec structs and __slots__ classes), so a change
# there rebuilds them.
_SLOTS = ["detector/core/_slots.h"]

setup(ext_modules=[
    Extension("detector.core._tally", ["detector/core/_tally.c"], depends=_SLOTS, optional=True),
    Extension("detector.core._spans", ["detector/core/_spans.c"], depends=_SLOTS, optional=True),
    Extension("detector.core._finish", ["detector/core/_finish.c"], depends=_SLOTS,
              optional=True),
    Extension("detector.core._shapes", ["detector/core/_shapes.c"], optional=True),
    # No fused multiply-add: the twin must round every step as Python's floats do.
    Extension("baselines._rate", ["baselines/_rate.c"], extra_compile_args=["-ffp-contract=off"],
              optional=True),
    Extension("baselines._quantity", ["baselines/_quantity.c"], depends=_SLOTS,
              extra_compile_args=["-ffp-contract=off"], optional=True),
])
