"""Child processes that do not outlive us, and SIGTERM as an exception.

Every process the detector starts (the Tansu broker, demo workers, the test services) is
started with :func:`die_with_parent` as its ``preexec_fn``: Linux then sends it SIGTERM when
its parent dies, even by SIGKILL, when no ``finally`` can run (``prctl(PR_SET_PDEATHSIG)``;
a process group would need the parent alive to signal it). SIGTERM, not SIGKILL: each of
them stops cleanly on it (the worker flushes, commits and removes its temp dir).

:func:`raise_on_sigterm` makes SIGTERM raise :class:`Terminated` in the main thread, so the
``finally`` blocks that stop children and remove temp dirs run on ``kill PID`` as they do on
Ctrl-C.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

__all__ = ["Terminated", "die_with_parent", "raise_on_sigterm"]

_PR_SET_PDEATHSIG = 1   # from <linux/prctl.h>


class Terminated(BaseException):   # like KeyboardInterrupt: not caught by `except Exception`
    """SIGTERM arrived (see :func:`raise_on_sigterm`)."""


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child get ``sig`` when this process dies (Linux; None
    elsewhere: Popen then starts the child as usual).

    The signal follows the *thread* that forks: start children from a thread that lives as
    long as they should (the main thread here).

    >>> import subprocess, sys
    >>> subprocess.run([sys.executable, "-c", "pass"], preexec_fn=die_with_parent()).returncode
    0
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)   # loaded before the fork, not in the child
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:   # the parent died before prctl took effect
            os.kill(os.getpid(), sig)
    return preexec


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)
    signal.signal(signal.SIGTERM, handler)
