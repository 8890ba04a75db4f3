"""Everything but the C extension is in pyproject.toml.

Stage 1's counting in C (detector/core/_tally.c) is optional: without a compiler the package
installs anyway and counts in Python, with the same results at a lower speed.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("detector.core._tally", ["detector/core/_tally.c"], optional=True)])
