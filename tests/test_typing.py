"""What the type checker is told about the code holds at run time."""

from __future__ import annotations

import pytest

from detector import config


def _subclasses(cls: type) -> list[type]:
    return [s for c in cls.__subclasses__() for s in (c, *_subclasses(c))]


def test_every_config_struct_is_frozen() -> None:
    # config._Base tells type checkers (dataclass_transform) that its subclasses are frozen:
    # msgspec must make every one of them so.
    structs = [c for c in _subclasses(config._Base) if c.__module__ == "detector.config"]
    assert {"Config", "Windows", "AlertmanagerConfig", "SeverityRule"} <= {
        c.__name__ for c in structs}
    for cls in structs:
        cfg = cls.__struct_config__
        assert (cfg.frozen, cfg.forbid_unknown_fields) == (True, True), cls
    w = config.Windows()
    with pytest.raises(AttributeError):
        w.size_seconds = 1.0
