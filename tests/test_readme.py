"""The README stays a short entry point, its links lead somewhere, and every measured figure in
the docs says when, on which commit and with which command it was measured."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))

# A measured figure: a time, a size, a rate, a share or a speed-up ("1.17×"; not a designed
# rise such as "×3").
FIGURE = re.compile(r"\d[\d,.]*\s?(?:µs|ms\b|MiB|KiB|GiB|MB\b|k? ?events/s|alerts/s|%)"
                    r"|\d(?:\.\d+)?×")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
COMMIT = re.compile(r"\b[0-9a-f]{7,40}(?:\+dirty)?\b")
COMMAND = re.compile(r"`(?:\.venv/bin/)?(?:python|detector|make)\b[^`]*`")


def test_readme_is_short() -> None:
    n = len(README.read_text("utf-8").splitlines())
    assert n <= 160, f"README.md has {n} lines; move detail into docs/"


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc: Path) -> None:
    text = doc.read_text("utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (doc.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert broken == [], f"{doc.name} links to missing files"


def _sections(text: str) -> list[list[str]]:
    """Lines from one heading to the next (a `#` line in a code fence is no heading)."""
    out: list[list[str]] = [[]]
    fence = ""
    for line in text.splitlines():
        m = re.match(r"(`{3,})", line)
        if m and (not fence or m.group(1) == fence):
            fence = "" if fence else m.group(1)
        elif line.startswith("#") and not fence:
            out.append([])
        out[-1].append(line)
    return out


def _provenance(line: str) -> bool:
    return bool(DATE.search(line) and COMMIT.search(line) and COMMAND.search(line))


def unsourced_figures(text: str) -> list[str]:
    """Lines with a measured figure whose line or section names no date, commit and command.

    >>> unsourced_figures("## a\\nstage 1: 0.43 µs an event\\n")
    ['stage 1: 0.43 µs an event']
    >>> unsourced_figures("## a\\n2026-12-07, 9a60c0a, `python bench/stage1.py`\\n0.43 µs\\n")
    []
    """
    bad = []
    for section in _sections(text):
        if any(_provenance(ln) for ln in section):
            continue
        bad += [ln for ln in section if FIGURE.search(ln) and not ln.startswith("<!--")]
    return bad


@pytest.mark.parametrize("doc", [README, *[d for d in DOCS if d.name != "config.md"]],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_figure_names_its_date_commit_and_command(doc: Path) -> None:
    assert unsourced_figures(doc.read_text("utf-8")) == []
