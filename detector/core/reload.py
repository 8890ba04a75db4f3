"""What of a new config a running worker may take without a restart: a pure diff of two
validated configs into the dotted keys that changed, split into those it can apply and those
that need a restart.

Reloadable are the settings that only decide what a window's scores *mean*, and where alerts
go: each signal's threshold, direction, min_count, runbook URL and actions; the severity
rules; the threshold overrides; the sinks; the alert links. Everything else is refused, named
by its dotted key: it shapes state (cohort levels, windows, baselines, counters, enabled
signals), stage 1's input, the worker's Kafka and metrics wiring or what it built at start-up
(containment hooks, the evidence writer), and applying it to running state would leave
baselines, partials or partitions that no longer fit. A key this module does not know is a
restart too, so a key added to the schema later is never applied half-way by accident.

>>> from detector.config import load_config
>>> from msgspec.structs import replace
>>> old = load_config(None, env=False)
>>> sig = replace(old.signal("refusal_rate"), threshold=3.0)
>>> new = replace(old, signals={**old.signals, "refusal_rate": sig},
...               windows=replace(old.windows, size_seconds=30.0))
>>> plan = plan_reload(old, new)
>>> plan.changed
('signals.refusal_rate.threshold', 'windows.size_seconds')
>>> plan.refused, plan.ok
(('windows.size_seconds',), False)
"""

from __future__ import annotations

from typing import Any

import msgspec

from detector.config import Config

__all__ = ["RELOADABLE_SIGNAL_KEYS", "RELOADABLE_TOP", "ReloadPlan", "changed_keys",
           "plan_reload", "reloadable"]

#: Top-level sections applied whole from the next window on.
RELOADABLE_TOP = frozenset({"severity", "overrides", "sinks", "links", "indicators"})
#: Per signal, the keys that only change how its scores are judged and what its alert says.
#: (``enabled`` is not one: a signal switched off stops teaching its baselines, and switched
#: back on would be scored against a stale one.)
RELOADABLE_SIGNAL_KEYS = frozenset({"threshold", "direction", "min_count", "runbook_url",
                                    "actions"})

Path = tuple[str | int, ...]


class ReloadPlan(msgspec.Struct, frozen=True):
    """The dotted keys that differ between two configs, and those of them a running worker
    cannot apply. ``ok``: every change may be applied (an empty plan is ok, and a no-op)."""

    changed: tuple[str, ...]
    refused: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.refused


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _walk(a: Any, b: Any, path: Path, out: list[Path]) -> None:
    if a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys()):
            _walk(a.get(k, _MISSING), b.get(k, _MISSING), (*path, k), out)
    elif (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
          and all(isinstance(x, dict) for x in a + b)):
        # A list of tables (severity rules, overrides) by entry; any other list is one value.
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(x, y, (*path, i), out)
    else:
        out.append(path)


_MISSING = object()


def _paths(old: Config, new: Config) -> list[Path]:
    """The paths of every leaf (or list of another length) that differs. A signal compares
    by its settings in effect, so listing a signal with its default values changes nothing."""
    a, b = msgspec.to_builtins(old), msgspec.to_builtins(new)
    names = sorted(old.signals.keys() | new.signals.keys())
    a["signals"] = {n: msgspec.to_builtins(old.signal(n)) for n in names}
    b["signals"] = {n: msgspec.to_builtins(new.signal(n)) for n in names}
    out: list[Path] = []
    _walk(a, b, (), out)
    return out


def reloadable(path: Path) -> bool:
    """Whether the key at ``path`` may change on a running worker."""
    if not path:
        return False
    if path[0] in RELOADABLE_TOP:
        return True
    return path[0] == "signals" and len(path) >= 3 and path[2] in RELOADABLE_SIGNAL_KEYS


def changed_keys(old: Config, new: Config) -> tuple[str, ...]:
    """Every dotted key whose value differs (``signals.refusal_rate.threshold``,
    ``severity[2].min_persistence``, or ``severity`` when the number of rules changed; a
    list of values such as ``cohorts.levels`` is one key)."""
    return tuple(_dotted(p) for p in _paths(old, new))


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Which changes from ``old`` to ``new`` apply, and which need a restart."""
    paths = _paths(old, new)
    return ReloadPlan(changed=tuple(_dotted(p) for p in paths),
                      refused=tuple(_dotted(p) for p in paths if not reloadable(p)))
