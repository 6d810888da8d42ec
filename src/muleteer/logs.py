"""Logging set-up: one format for every process, stamped with the process role.

Every module logs through ``logging.getLogger(__name__)`` (a child of ``muleteer``).
The role ("master", "worker 3", "mule 2") is a process-global set right after fork, and a
filter on the single handler copies it into every record, so a line always says which
process wrote it. Nothing here is called from an OS signal handler.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from types import FrameType

_role = "master"

LOG = logging.getLogger("muleteer")


def set_role(role: str) -> None:
    """Name the current process in every later log line (called after fork)."""
    global _role
    _role = role


def role() -> str:
    return _role


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


class _Formatter(logging.Formatter):
    """``2026-12-04 20:41:41 [worker 1 1234] message``; the level only when it matters."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno < logging.WARNING else record.levelname + ": "
        line = f"{stamp} [{getattr(record, 'role', _role)} {record.process}] {level}"
        line += record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(logto: str | None = None, debug: bool = False) -> None:
    """Configure the ``muleteer`` logger in the master (children inherit it through fork).

    With ``logto`` the file is opened in append mode and installed as the process's fd 1
    and 2, the way uWSGI's ``--logto`` works: ``print()`` in an app or a mule ends up in
    the same file as the server's own lines, and forked children inherit the descriptors,
    so O_APPEND keeps their whole lines from overwriting each other.
    """
    reopen(logto)
    # print() in an app or a mule goes to the same file as the server's lines: make it
    # line-buffered (as uWSGI's processes are), or lines would wait in an 8 KiB buffer
    # and be lost when a process ends with os._exit().
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler.addFilter(_RoleFilter())
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.DEBUG if debug else logging.INFO)
    LOG.propagate = False
    # Apps that log through the root logger without configuring it still get a line.
    if not logging.getLogger().handlers:
        root = logging.StreamHandler(sys.stderr)
        root.setFormatter(_Formatter())
        root.addFilter(_RoleFilter())
        logging.getLogger().addHandler(root)


def reopen(logto: str | None) -> None:
    """Reopen the log file (master FIFO ``l``): after logrotate moved it away."""
    if not logto:
        return
    fd = os.open(logto, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def reopen_handler(logto: str | None) -> Callable[[int, FrameType | None], None]:
    """An OS signal handler for children: reopen the log file (os.open + dup2 only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        reopen(logto)

    return handler


def reopen_if_moved(logto: str | None) -> None:
    """Reopen when fd 2 is no longer the file at `logto` (rotated before this child had
    its SIGWINCH handler: the signal would have been ignored)."""
    if not logto:
        return
    try:
        if os.fstat(2).st_ino == os.stat(logto).st_ino:
            return
    except OSError:
        pass
    reopen(logto)
