"""Severity rules from config: signal × environment × persistence × score -> sev1..sev4.

Rules are tried in order and the first match wins, so the config reads top-down like a
routing tree. No match means "record only": the window is anomalous but nobody is told.

>>> from detector.config import SeverityRule as R
>>> rules = [R(severity="sev1", signals=["secret_leak"]),
...          R(severity="sev2", environments=["production"], min_persistence=3),
...          R(severity="sev4")]
>>> classify(rules, "secret_leak", "canary", 1, 0.0)
'sev1'
>>> [classify(rules, "refusal_rate", "production", n, 7.0) for n in (2, 3)]
['sev4', 'sev2']
>>> classify(rules, "refusal_rate", "production", 1, 5.2, confirmed=True)
'sev2'
"""

from __future__ import annotations

from collections.abc import Sequence

from detector.config import Severity, SeverityRule
from detector.core.signals import matches

__all__ = ["RANK", "classify"]

#: sev1 is the most severe.
RANK: dict[Severity, int] = {"sev1": 1, "sev2": 2, "sev3": 3, "sev4": 4}


def classify(rules: Sequence[SeverityRule], signal: str, environment: str, persistence: int,
             score: float, confirmed: bool = False) -> Severity | None:
    """The severity of the first rule that matches, or ``None``. A shift the sequential
    evidence confirmed meets a rule's ``min_persistence`` (unless the rule says
    ``confirmed = false``): it is sustained, however few windows crossed the threshold."""
    for r in rules:
        if ((persistence >= r.min_persistence or (confirmed and r.confirmed))
                and abs(score) >= r.min_score
                and matches(signal, r.signals)
                and ("*" in r.environments or environment in r.environments)):
            return r.severity
    return None
