"""The config reference (docs/config.md), generated from the schema and the default file.

Keys, types and defaults come from the msgspec structs of :mod:`detector.config`; what a key
means comes from the comments of the packaged ``detector/data/detector.toml``, so the two
places a person reads (the file they copy, the reference) cannot drift apart. It lives in the
package beside the schema and the file it reads, so ``python -m detector.configdoc`` works
from any install. ``make docs`` writes docs/config.md; ``tests/test_configdoc.py`` fails when
the file is stale or a key has no comment.

Where a key's meaning is found in the file:

- the comment lines directly above it (no blank line between), and its own ``# …`` comment
  (each key needs one of them: a key added below another one does not borrow its comment);
- a key that is unset by default is written commented out (``# jsonl = "alerts.jsonl"``) and
  documented the same way;
- the keys of a table that appears many times (``[signals.<name>]``, ``[[severity]]``,
  ``[[overrides]]``, ``[[rebaseline]]``) are listed once, in the comment block at or before
  the table's first header (which may be a commented-out example), one per line as
  ``#   key   meaning`` (two or more spaces on each side of the key).

A comment block right after a table's header and followed by a blank line describes the table.

>>> toml = '''
... [windows]
... # Event-time tumbling windows.
... size_seconds = 60
... allowed_lateness_seconds = 30   # later events are counted as late
... late_policy = "count"
... '''
>>> found = Comments(toml)
>>> found.meaning("windows", "size_seconds"), found.meaning("windows", "allowed_lateness_seconds")
('Event-time tumbling windows.', 'later events are counted as late')
>>> found.meaning("windows", "late_policy") is None
True
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import resources
from typing import Any, NamedTuple

import msgspec
from msgspec import inspect as mi

from detector.config import Config

__all__ = ["Comments", "MissingComment", "render"]

_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)(?:\.[A-Za-z0-9_.\-]+)?\s*=")
_COMMENTED_KEY = re.compile(r"^# ?([a-z_][a-z0-9_]*)(?:\.[a-z0-9_.]+)? = ")
_COMMENTED_HEADER = re.compile(r"^#\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*$")
_RULE = re.compile(r"^#\s*-{10,}\s*$")
_ENTRY = re.compile(r"^#(\s{2,})([a-z_][\w.<>]*(?:, [a-z_][\w.<>]*)*)(\s{2,})(\S.*)$")

REGENERATE = "python -m detector.configdoc > docs/config.md   (or: make docs)"


class MissingComment(ValueError):
    """Schema keys that the default file does not explain."""


class Row(NamedTuple):
    key: str
    type: str
    default: str
    meaning: str


def _inline(line: str) -> str:
    """The ``# …`` comment after a value, outside any string."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[i + 1:].strip()
    return ""


class Comments:
    """What the comments of a commented TOML file say about its keys."""

    def __init__(self, text: str) -> None:
        self.keys: dict[tuple[str, str], str] = {}
        self.fields: dict[str, dict[str, str]] = {}
        self.notes: dict[str, str] = {}
        lines = text.splitlines()
        table = ""
        pending: list[str] = []
        after_header = False
        for i, raw in enumerate(lines):
            line = raw.strip()
            if not line:
                if pending and after_header:
                    self.notes[table] = " ".join(pending)
                pending, after_header = [], False
                continue
            if line.startswith("#"):
                if self._entry_block_start(lines, i):
                    self._field_list(lines, i)
                if _RULE.match(line):
                    continue
                m = _COMMENTED_KEY.match(line)
                if m:
                    self._key(table, m.group(1), pending, _inline(line[1:]))
                    pending = []
                    continue
                pending.append(line.lstrip("#").strip())
                continue
            m = _HEADER.match(line)
            if m and not _KEY.match(line):
                table, pending, after_header = m.group(1), [], True
                continue
            m = _KEY.match(line)
            if m:
                self._key(table, m.group(1), pending, _inline(line))
                pending = []
            after_header = False

    def _key(self, table: str, key: str, pending: list[str], inline: str) -> None:
        parts = [" ".join(pending), inline]
        text = " ".join(p for p in parts if p)
        if text and (table, key) not in self.keys:
            self.keys[(table, key)] = text

    @staticmethod
    def _entry_block_start(lines: list[str], i: int) -> bool:
        """True at the first line of a comment block (where its field list is read)."""
        return i == 0 or not lines[i - 1].strip().startswith("#")

    def _field_list(self, lines: list[str], start: int) -> None:
        """Read ``#   key   meaning`` lines of the block at ``start`` for the table whose
        header (real or commented out) comes first at or after it."""
        end = start
        while end < len(lines) and lines[end].strip().startswith("#"):
            end += 1
        entries: dict[str, str] = {}
        last: str | None = None
        column = 0
        for raw in lines[start:end]:
            line = raw.strip()
            body = line[1:]
            if last is not None and len(body) - len(body.lstrip()) >= column and body.strip():
                entries[last] += " " + body.strip()
                continue
            m = _ENTRY.match(line)
            if not m:
                last = None
                continue
            column = len(m.group(1)) + len(m.group(2)) + len(m.group(3))
            for name in m.group(2).split(", "):
                entries[name] = m.group(4).strip()
            last = m.group(2).split(", ")[-1]
        if not entries:
            return
        for raw in lines[start:]:
            m = _COMMENTED_HEADER.match(raw.strip()) or (
                _HEADER.match(raw) if not _KEY.match(raw) else None)
            if m:
                self.fields.setdefault(m.group(1), {}).update(entries)
                return

    def meaning(self, table: str, key: str) -> str | None:
        return self.keys.get((table, key))

    def listed(self, table: str, key: str) -> str | None:
        """A key's entry in the field list of ``table`` (``signals.<name>`` matches any name)."""
        for name, entries in self.fields.items():
            if name == table or (table.endswith(".<name>") and
                                 name.startswith(table[: -len("<name>")])):
                for k in (key, f"{key}.<sev>"):
                    if k in entries:
                        return entries[k]
        return None


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _bounds(t: Any) -> str:
    lo = [f"≥ {_num(t.ge)}"] if t.ge is not None else [f"> {_num(t.gt)}"] if t.gt is not None \
        else []
    hi = [f"≤ {_num(t.le)}"] if t.le is not None else [f"< {_num(t.lt)}"] if t.lt is not None \
        else []
    return ", ".join(lo + hi)


def _type(t: mi.Type) -> str:
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.IntType | mi.FloatType):
        name = "int" if isinstance(t, mi.IntType) else "number"
        b = _bounds(t)
        return f"{name} {b}" if b else name
    if isinstance(t, mi.StrType):
        return "string"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(f"`{v}`" for v in t.values)
    if isinstance(t, mi.DateTimeType):
        return "RFC 3339 date-time with an offset"
    if isinstance(t, mi.ListType):
        item = _type(t.item_type)
        if isinstance(t.item_type, mi.LiteralType):
            item = "(" + item + ")"
        return f"list of {item}"
    if isinstance(t, mi.DictType):
        return f"table of {_type(t.key_type)} → {_type(t.value_type)}"
    if isinstance(t, mi.UnionType):
        kinds = [x for x in t.types if not isinstance(x, mi.NoneType)]
        inner = " or ".join(_type(x) for x in kinds)
        return f"{inner} (may be unset)" if len(kinds) < len(t.types) else inner
    raise TypeError(f"no rendering for {t!r}")   # a new kind of field: teach _type


def _toml(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    return str(v)


def _default(f: mi.Field) -> Any:
    if f.default is not msgspec.NODEFAULT:
        return f.default
    if f.default_factory is not msgspec.NODEFAULT:
        return f.default_factory()
    return msgspec.NODEFAULT


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


class _Table(NamedTuple):
    header: str      # as written in the file: "[kafka]", "[signals.<name>]", "[[severity]]"
    path: str        # dotted, as Comments knows it: "kafka", "signals.<name>", "severity"
    struct: mi.StructType
    values: dict[str, Any] | None   # the default file's values (struct tables only)
    repeated: bool


def _tables(st: mi.StructType, prefix: str, values: dict[str, Any]) -> list[_Table]:
    here = _Table(f"[{prefix}]", prefix, st, values, False)
    out: list[_Table] = [here] if prefix else []
    for f in st.fields:
        path = f"{prefix}.{f.name}" if prefix else f.name
        t = f.type
        if isinstance(t, mi.StructType):
            out += _tables(t, path, values.get(f.name, {}))
        elif isinstance(t, mi.DictType) and isinstance(t.value_type, mi.StructType):
            out.append(_Table(f"[{path}.<name>]", f"{path}.<name>", t.value_type, None, True))
        elif isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
            out.append(_Table(f"[[{path}]]", path, t.item_type, None, True))
    return out


def _scalar_fields(st: mi.StructType) -> list[mi.Field]:
    def nested(t: mi.Type) -> bool:
        return isinstance(t, mi.StructType) or (
            isinstance(t, mi.DictType | mi.ListType)
            and isinstance(getattr(t, "value_type", getattr(t, "item_type", None)),
                           mi.StructType))
    return [f for f in st.fields if not nested(f.type)]


INTRO = """\
One TOML file configures the detector; `config/detector.toml` (the packaged
`detector/data/detector.toml`) is the default and is fully commented. Unknown keys are
errors, and `detector check-config FILE` names the dotted key and the problem of every error.
`DETECTOR_KAFKA_<KEY>` and `DETECTOR_METRICS_<KEY>` override any key of `[kafka]` and
`[metrics]`; `DETECTOR_ALERTMANAGER_URLS` (comma-separated) overrides
`sinks.alertmanager.urls`.

"default" is what a key is when a file leaves it out; where the packaged file sets something
else, that is shown too.
"""


def render(toml_text: str | None = None) -> str:
    """docs/config.md for the schema and a commented config file (default: the packaged one).

    Raises MissingComment naming every key the file does not explain."""
    if toml_text is None:
        toml_text = resources.files("detector").joinpath("data/detector.toml").read_text("utf-8")
    comments = Comments(toml_text)
    values = tomllib.loads(toml_text)
    root = mi.type_info(Config)
    assert isinstance(root, mi.StructType)
    out = ["<!-- Generated from detector/config.py and detector/data/detector.toml by",
           f"     {REGENERATE}. Do not edit. -->", "",
           "# Config reference", "", INTRO]
    missing: list[str] = []
    for table in _tables(root, "", values):
        rows: list[Row] = []
        for f in _scalar_fields(table.struct):
            key = f"{table.path}.{f.name}"
            meaning = (comments.listed(table.path, f.name) if table.repeated
                       else comments.meaning(table.path, f.name)
                       or comments.listed(table.path, f.name))
            if not meaning:
                missing.append(key)
                continue
            d = _default(f)
            default = "required" if d is msgspec.NODEFAULT else _toml(d)
            if table.values is not None and f.name in table.values \
                    and table.values[f.name] != d:
                default += f" (packaged file: {_toml(table.values[f.name])})"
            rows.append(Row(f"`{key}`", _type(f.type), default, meaning))
        if not rows:
            continue
        out += [f"## `{table.header}`", ""]
        note = comments.notes.get(table.path)
        if note:
            out += [note, ""]
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
        out.append("")
    if missing:
        raise MissingComment(
            "no comment explains " + ", ".join(missing) + " in detector/data/detector.toml: "
            "add a comment line above each key (a repeated table's keys go in its field list "
            f"as `#   key   meaning`), then regenerate: {REGENERATE}")
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    try:
        sys.stdout.write(render())
    except MissingComment as e:
        sys.exit(f"configdoc: {e}")
