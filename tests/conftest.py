from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from detector.config import Config, load_config

CONTRACTS = Path(__file__).parent / "contracts"


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config(None, env=False)


@pytest.fixture(scope="session")
def alert_validator() -> Draft202012Validator:
    schema = json.loads((CONTRACTS / "alert.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=FormatChecker())


@pytest.fixture(scope="session")
def spike_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.5 h of traffic with a refusal spike (windowed alerts) and a secret leak (a hard
    rule): the backtest's input in its tests."""
    from detector.lab.simulate import simulate

    out = tmp_path_factory.mktemp("spike_sim")
    simulate(out, hours=1.5, seed=2, scenarios=["refusal_spike", "secret_leak"], rate=20.0)
    return out
