"""Temp files: the demo, the broker and a pytest run leave nothing under TMPDIR when they
end, normally or by error (signals: test_signals.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from harness import ROOT, files_under, start_demo

from detector.lab.broker import Tansu

pytestmark = pytest.mark.integration


def test_demo_leaves_no_temp_folder_on_a_normal_end_or_an_error(tmp_path: Path) -> None:
    tmp, out = tmp_path / "tmp", tmp_path / "demo.out"
    tmp.mkdir()
    p = start_demo(tmp, out, "--duration", "30")
    assert p.wait(120) == 0, out.read_text()
    assert files_under(tmp) == []
    # The broker cannot start: an error exit, and still nothing left.
    p = start_demo(tmp, out, "--duration", "30", TANSU_BIN="/bin/false")
    assert p.wait(60) == 1, out.read_text()
    assert "Tansu did not answer" in out.read_text()
    assert files_under(tmp) == []


def test_a_broker_removes_the_log_folder_it_made(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    b = Tansu()
    b.start()
    try:
        assert b.log_dir.parent == tmp_path and b.log_path.exists()
        b.restart()
        assert b.alive
    finally:
        b.stop()
    assert files_under(tmp_path) == []


def test_a_test_run_leaves_no_files_under_tmpdir(tmp_path: Path) -> None:
    """A passing pytest run removes its tmp_path folders (``tmp_path_retention_policy``) and
    the broker it started; a failing one would keep them to look at."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q",
         "tests/test_config.py::test_unreadable_and_invalid_toml",
         "tests/integration/test_broker.py::test_restart_same_port"],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stdout.decode()[-3000:]
    assert [f for f in files_under(tmp) if not f.is_dir()] == []
