"""Everything but the C extensions is in pyproject.toml.

Stage 1's counting (detector/_tally.c) and the checks after decoding (detector/_finish.c) in
C are optional: without a compiler the package installs anyway and runs their Python
versions, with the same results at a lower speed.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension(f"detector.{name}", [f"detector/{name}.c"], depends=["detector/_slots.h"],
              optional=True)
    for name in ("_tally", "_finish")
])
