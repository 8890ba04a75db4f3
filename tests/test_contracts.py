"""The vendored contract copies must equal shared/schema when it is beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import CONTRACTS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "schema"


#: Fields the vendored trace-event contract adds to shared/schema's (compatible extensions,
#: optional, appended) until shared/schema carries them too.
ADDED: dict[str, tuple[str, ...]] = {"alert.schema.json": (),
                                     "trace-event.schema.json": ("eval_scores", "output_entropy",
                                                                 "escalated")}


def _shared(name: str) -> Path:
    if not SHARED.is_dir():
        # A clone elsewhere has no shared/ beside it; CI always lays one there.
        assert os.environ.get("CI") != "true", f"{SHARED} missing in CI"
        pytest.skip(f"no {SHARED} beside this clone to compare with")
    return SHARED / name


@pytest.mark.parametrize("name", ["alert.schema.json", "trace-event.schema.json"])
def test_vendored_contract_matches_shared(name: str) -> None:
    """Equal, but for optional properties appended to the vendored copy."""
    import json

    ours, theirs = json.loads((CONTRACTS / name).read_text()), json.loads(
        _shared(name).read_text())
    added = [p for p in ours.get("properties", {}) if p not in theirs.get("properties", {})]
    assert tuple(added) == tuple(p for p in ADDED[name] if p not in theirs.get("properties", {}))
    assert not set(added) & set(ours.get("required", []))
    for p in added:
        del ours["properties"][p]
    assert ours == theirs


def test_trace_event_fields_are_the_contracts_in_its_order() -> None:
    """The decoder matches keys fastest in declared order, which is the contract's (see
    TraceEvent), and the simulator writes that order."""
    import json

    from detector.core.events import TraceEvent

    schema = json.loads((CONTRACTS / "trace-event.schema.json").read_text())
    assert list(TraceEvent.__struct_fields__) == list(schema["properties"])
