"""docs/config.md is what the schema and the default file's comments say today."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import msgspec
import pytest

from detector.config import Config
from detector.configdoc import REGENERATE, Comments, MissingComment, render

ROOT = Path(__file__).resolve().parents[1]
TOML = resources.files("detector").joinpath("data/detector.toml").read_text("utf-8")


def test_config_reference_is_current() -> None:
    current = (ROOT / "docs" / "config.md").read_text("utf-8")
    assert current == render(), f"docs/config.md is stale; regenerate it: {REGENERATE}"


def test_a_key_without_a_comment_fails_naming_it_and_the_fix() -> None:
    text = TOML.replace("# Trace ids kept as evidence on an alert (at most 20, per the alert "
                        "contract).\n", "")
    assert text != TOML
    with pytest.raises(MissingComment) as e:
        render(text)
    assert "alerting.evidence_trace_ids" in str(e.value)
    assert "make docs" in str(e.value)


def test_an_unset_key_is_documented_by_its_commented_out_line() -> None:
    doc = render()
    row = next(ln for ln in doc.splitlines() if ln.startswith("| `sinks.jsonl`"))
    assert "also append alerts to this file" in row and "| unset |" in row


def _keys(t: type = Config, prefix: str = "") -> list[str]:
    out = []
    for f in msgspec.structs.fields(t):
        if isinstance(f.type, type) and issubclass(f.type, msgspec.Struct):
            out += _keys(f.type, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def test_every_key_of_the_schema_has_a_row() -> None:
    doc = render()
    for key in _keys():
        assert f"| `{key}" in doc, key


def test_field_lists_document_repeated_tables() -> None:
    text = """
# Each [[rule]] table sets:
#   severity      sev1..sev4
#   min_score     |score| at least this,
#                 in standard units
#   a, b          both of these

[[rule]]
severity = "sev1"
"""
    found = Comments(text)
    assert found.listed("rule", "min_score") == "|score| at least this, in standard units"
    assert found.listed("rule", "a") == found.listed("rule", "b") == "both of these"
    assert found.listed("other", "severity") is None


def test_a_comment_documents_only_the_key_below_it() -> None:
    text = """
[t]
# A's.
a = 1
b = 2

c = 3   # its own
# Its own too.
d = 4   # and this
"""
    found = Comments(text)
    assert found.meaning("t", "a") == "A's."
    assert found.meaning("t", "b") is None
    assert found.meaning("t", "c") == "its own"
    assert found.meaning("t", "d") == "Its own too. and this"


def test_keys_that_harnesses_rewrite_stay_bare_lines() -> None:
    """Integration tests and benches set the metrics port with `^port = 0$` after rewriting
    `^port = \\d+`: its meaning goes on the line above, not after the value."""
    import re

    assert re.search(r"(?m)^port = \d+$", TOML)
    assert re.search(r'(?m)^host = "0\.0\.0\.0"$', TOML)
