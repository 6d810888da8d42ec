"""Locks shared by the master and every process it forks (``uwsgi.lock``, counters).

Each lock is a byte of one unlinked temporary file, locked with ``fcntl.lockf``: POSIX
record locks belong to a process, so children that inherited the same descriptor still
exclude each other, and the kernel releases a dead process's locks (a worker killed while
holding one cannot wedge the others). Record locks do not exclude the threads of one
process, so each lock also has a ``threading.Lock``, re-created in a child after fork in
case another thread held it at that moment. This avoids importing ``multiprocessing``
(several MiB in every process) for two kinds of lock.
"""

from __future__ import annotations

import fcntl
import os
import threading


class LockFile:
    """The file whose bytes are the locks; made by the master before any fork."""

    def __init__(self) -> None:
        directory = os.environ.get("TMPDIR") or "/tmp"
        try:
            # An anonymous file: nothing on disk to clean up, nothing anyone can open.
            handle = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except (AttributeError, OSError):
            import tempfile  # off Linux: a named file, unlinked at once

            handle, path = tempfile.mkstemp(prefix="muleteer-locks-")
            os.unlink(path)
            os.set_inheritable(handle, False)
        self.fd = handle  # inherited through fork, never across exec


class ProcessLock:
    """One lock: non-recursive, like uWSGI's (locking twice in one thread deadlocks)."""

    def __init__(self, file: LockFile, index: int) -> None:
        self._file = file
        self._index = index
        self._thread = threading.Lock()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._thread = threading.Lock()

    def acquire(self, blocking: bool = True) -> bool:
        if not self._thread.acquire(blocking):
            return False
        flags = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.lockf(self._file.fd, flags, 1, self._index)
        except BlockingIOError:
            self._thread.release()
            return False
        except BaseException:
            self._thread.release()
            raise
        return True

    def release(self) -> None:
        fcntl.lockf(self._file.fd, fcntl.LOCK_UN, 1, self._index)
        self._thread.release()

    def __enter__(self) -> ProcessLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def make_locks(count: int, file: LockFile | None = None) -> list[ProcessLock]:
    shared = file or LockFile()
    return [ProcessLock(shared, index) for index in range(count)]
