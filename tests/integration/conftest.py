"""Integration fixtures: one real Tansu broker per session (memory storage, free loopback port).

A broker that cannot start fails the tests that need it (BrokerError), never skips them."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # harness.py

from detector.lab.broker import Tansu

_ids = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    b = Tansu(log_dir=tmp_path_factory.mktemp("tansu"))
    b.start()  # raises BrokerError with the log tail: the test errors, it does not skip
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def names() -> dict[str, str]:
    """Topic and group names of their own for one test (the broker is shared)."""
    n = next(_ids)
    return {"traces_topic": f"traces-{n}", "alerts_topic": f"alerts-{n}",
            "dead_letter_topic": f"dlq-{n}", "group": f"detector-{n}"}
