"""The master FIFO (``--master-fifo PATH``): one byte is one command, as in uWSGI.

The FIFO is created with mode 0600; a symlink (or anything that is not a FIFO) in its
place is refused rather than followed or removed. The master also holds a write end of
its own, so the read end never reports EOF when a writer (``echo r > fifo``) closes:
without it the descriptor would be readable forever and spin the loop.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

log = logging.getLogger(__name__)

COMMANDS = {
    "r": "graceful reload",
    "R": "brutal reload",
    "c": "chain reload of the workers",
    "w": "graceful reload of the workers",
    "W": "brutal reload of the workers",
    "m": "reload of the mules",
    "q": "graceful shutdown",
    "Q": "brutal shutdown",
    "s": "stats to the log",
    "P": "rewrite the pidfile",
    "l": "reopen the log file",
}


class FifoError(Exception):
    pass


class MasterFifo:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None:
            if stat.S_ISLNK(info.st_mode) or not stat.S_ISFIFO(info.st_mode):
                raise FifoError(
                    f"master-fifo {path!r} exists and is not a FIFO (a symlink or a regular "
                    "file is never followed or replaced)"
                )
            if info.st_uid != os.geteuid():
                raise FifoError(f"master-fifo {path!r} belongs to another user")
            os.unlink(path)  # a stale FIFO of a previous run
        previous = os.umask(0o177)
        try:
            os.mkfifo(path, 0o600)
        finally:
            os.umask(previous)
        flags = os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        self.fd = os.open(path, os.O_RDONLY | flags)
        self.keep_open = os.open(path, os.O_WRONLY | flags)
        log.info("master fifo %s created (mode 0600)", path)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> str:
        """The command letters received; unknown bytes are logged and ignored."""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return ""
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return ""
            raise
        out = []
        for byte in data:
            char = chr(byte)
            if char in COMMANDS:
                out.append(char)
            elif char not in "\r\n ":
                log.warning("master fifo: unknown command %r ignored", char)
        return "".join(out)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.keep_open)
        try:
            os.unlink(self.path)
        except OSError:
            pass
