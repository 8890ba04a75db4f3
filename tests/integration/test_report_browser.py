"""The backtest report in a real headless browser (Debian's chromium): the plots render and
nothing is logged to the console. The same page with plotly.js taken out is the control: its
plots stay blank and its console says why, so both checks are seen to catch a broken page."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

DETECTOR = [sys.executable, "-m", "detector.cli"]
WIDTH, HEIGHT = 1000, 1600
BROWSER_TIMEOUT_S = 120


def png_rgb(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what chromium writes) as a height × width × 3
    array: the spec's five row filters undone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    stride = w * bpp
    raw = zlib.decompress(b"".join(idat))
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray(np.frombuffer(line, np.uint8) + np.frombuffer(prev, np.uint8))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + (left + prev[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        out[y] = np.frombuffer(line, np.uint8)
        prev = line
    return out.reshape(h, w, bpp)[:, :, :3]


def test_png_reader_on_a_known_image() -> None:
    # 2 × 4 RGB, one row per filter: Sub, Up, Average, Paeth (bytes worked out by hand)
    rows = [b"\x01" + bytes([255, 0, 0, 0, 255, 255]), b"\x02" + bytes([0, 255, 255, 1, 1, 1]),
            b"\x03" + bytes([139, 149, 159, 35, 40, 45]), b"\x04" + bytes([0, 0, 0, 160, 50, 196])]
    ihdr = struct.pack(">IIBBBBB", 2, 4, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
           + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
    assert png_rgb(png).tolist() == [[[255, 0, 0], [255, 255, 255]],
                                     [[255, 255, 255], [0, 0, 0]],
                                     [[10, 20, 30], [40, 50, 60]],
                                     [[10, 20, 30], [200, 100, 0]]]


def _browser(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """chromium headless on ``url``, bounded in time (its whole process group is killed)."""
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=15000", *args, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _look(page: Path, tmp: Path) -> tuple[int, list[str], int]:
    """Non-white pixels of a screenshot, console lines, plotly's SVG roots in the DOM."""
    shot = tmp / f"{page.stem}.png"
    r = _browser(page.as_uri(), tmp / f"profile-{page.stem}", f"--screenshot={shot}")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    rgb = png_rgb(shot.read_bytes()).astype(np.int16)
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    ink = int(np.count_nonzero((rgb < 235).any(axis=2)))
    dom = _browser(page.as_uri(), tmp / f"profile-{page.stem}-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    return ink, console, len(re.findall(r'class="main-svg"', dom.stdout))


def test_the_report_renders_its_plots_in_chromium(spike_sim: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    r = subprocess.run([*DETECTOR, "backtest", str(spike_sim / "traces.jsonl"),
                        "--out", str(report)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    page = report.read_text()
    plots = page.count('<div id="plot-')
    assert plots >= 2

    from plotly.offline import get_plotlyjs

    control = tmp_path / "control.html"
    control.write_text(page.replace(get_plotlyjs(), ""))

    ink, console, svgs = _look(report, tmp_path)
    c_ink, c_console, c_svgs = _look(control, tmp_path)
    # the control: no plots, and the console says Plotly is missing
    assert c_svgs == 0 and any("Plotly is not defined" in line for line in c_console), c_console
    # the report: every plot drew its SVG layers, nothing on the console, and the first
    # screen holds far more drawn pixels than the same page without its plots
    assert console == [], console
    assert svgs >= 2 * plots, (svgs, plots)
    assert ink > c_ink + 0.03 * WIDTH * HEIGHT, (ink, c_ink)
