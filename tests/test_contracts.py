"""The vendored contract copies must equal shared/schema when it is beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import CONTRACTS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "schema"


@pytest.mark.parametrize("name", ["alert.schema.json", "trace-event.schema.json"])
def test_vendored_contract_matches_shared(name: str) -> None:
    if not SHARED.is_dir():
        # A clone elsewhere has no shared/ beside it; CI always lays one there.
        assert os.environ.get("CI") != "true", f"{SHARED} missing in CI"
        pytest.skip(f"no {SHARED} beside this clone to compare with")
    assert (CONTRACTS / name).read_bytes() == (SHARED / name).read_bytes()


def test_trace_event_fields_are_the_contracts_in_its_order() -> None:
    """The decoder matches keys fastest in declared order, which is the contract's (see
    TraceEvent), and the simulator writes that order."""
    import json

    from detector.core.events import TraceEvent

    schema = json.loads((CONTRACTS / "trace-event.schema.json").read_text())
    assert list(TraceEvent.__struct_fields__) == list(schema["properties"])
