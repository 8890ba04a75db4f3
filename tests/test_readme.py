"""The README's config reference stays in step with the config schema."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from detector.config import Config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _keys(t: type, prefix: str = "") -> list[str]:
    out = []
    for f in msgspec.structs.fields(t):
        if isinstance(f.type, type) and issubclass(f.type, msgspec.Struct):
            out += _keys(f.type, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def test_every_config_key_is_in_the_reference() -> None:
    table = README[README.index("## Config reference"):README.index("## Streaming")]
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, flags=re.M):
        names = re.findall(r"`([a-z_.<>]+)`", cell)
        if names:
            head = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
            documented |= {names[0]} | {n if "." in n else head + n for n in names[1:]}
    missing = [k for k in _keys(Config) if k not in documented]
    assert missing == []
