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
