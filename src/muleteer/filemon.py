"""File monitors (``uwsgi.add_file_monitor``, ``--fs-reload``, ``--fs-signal``).

Two interchangeable backends behind :class:`FileMonitorBackend`:

* :class:`InotifyBackend` (Linux): one inotify instance whose fd sits in the master's
  selector; events are delivered by the kernel as they happen.
* :class:`StatPollBackend` (elsewhere): the master calls :meth:`poll_changed` on its
  regular tick and each watch is compared with a stat snapshot.

Both follow uWSGI (research/uwsgi-behaviour.md section 4.12): a watched directory covers
its direct children only, a path that does not exist when it is added gives a watch that
never fires (logged here once, at warning level, instead of silently), and all pending
changes are collapsed so that each changed watch is reported once per wake-up. There is
no cap on the number of watches (uWSGI stops at 64).
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import sys
from typing import Any, Protocol

__all__ = [
    "WATCH_MASK",
    "FileMonitorBackend",
    "InotifyBackend",
    "StatPollBackend",
    "make_file_monitor_backend",
]

logger = logging.getLogger(__name__)

# inotify(7) event bits, spelled out so this module imports without inotify_simple.
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000

#: The events a watch subscribes to (the set uWSGI uses).
WATCH_MASK = (
    _IN_ATTRIB
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MODIFY
    | _IN_MOVE_SELF
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
)

# A watched directory written to without pause could keep the drain loop busy forever;
# whatever is left after this many reads stays queued, so the fd is still readable and
# the master comes back to it on its next pass.
_MAX_READS_PER_DRAIN = 64


class FileMonitorBackend(Protocol):
    """What the master needs from a file monitor implementation."""

    def add(self, path: str) -> int:
        """Watch ``path``; return a watch id (a missing path gives one that never fires)."""
        ...

    def fileno(self) -> int | None:
        """An fd for the master's selector, or None for a polling backend."""
        ...

    def read_changed(self) -> list[int]:
        """Drain every pending event; each changed watch id once."""
        ...

    def poll_changed(self) -> list[int]:
        """Polling backends: stat now and return the changed ids (others: [])."""
        ...

    def close(self) -> None:
        """Release the backend's resources; idempotent."""
        ...


def _warn_missing(path: str, error: OSError) -> None:
    logger.warning(
        "file monitor on %s will never fire: %s", path, error.strerror or error.__class__.__name__
    )


class InotifyBackend:
    """inotify through ``inotify_simple``; the fd is non-blocking and close-on-exec."""

    def __init__(self, inotify: Any = None) -> None:
        """``inotify``: an ``inotify_simple.INotify``-like object (tests); default a new one."""
        if inotify is None:
            import inotify_simple  # Linux only; ImportError tells the factory to fall back

            # Not inheritable: children must not keep the master's inotify instance
            # (fork+exec of cron commands). Non-blocking: the selector may report
            # readiness that a previous drain already consumed, and the master loop must
            # never block on this fd.
            inotify = inotify_simple.INotify(inheritable=False, nonblocking=True)
        self._inotify: Any = inotify
        self._ids = itertools.count(1)
        self._ids_by_wd: dict[int, list[int]] = {}
        self._paths: dict[int, str] = {}
        self._closed = False

    def add(self, path: str) -> int:
        watch_id = next(self._ids)
        self._paths[watch_id] = path
        try:
            wd = int(self._inotify.add_watch(path, WATCH_MASK))
        except OSError as exc:
            _warn_missing(path, exc)
            return watch_id
        # The kernel hands out one wd per inode: a second watch on the same file shares it.
        self._ids_by_wd.setdefault(wd, []).append(watch_id)
        return watch_id

    def fileno(self) -> int | None:
        return None if self._closed else int(self._inotify.fileno())

    def read_changed(self) -> list[int]:
        changed: dict[int, None] = {}  # an ordered set
        for _ in range(0 if self._closed else _MAX_READS_PER_DRAIN):
            try:
                events = self._inotify.read(timeout=0)
            except BlockingIOError:
                break
            if not events:
                break
            for event in events:
                self._handle(event.wd, event.mask, changed)
        return list(changed)

    def _handle(self, wd: int, mask: int, changed: dict[int, None]) -> None:
        if mask & _IN_Q_OVERFLOW:
            # The kernel dropped events: any watch may have changed, so report them all.
            logger.warning("inotify queue overflowed; treating every file monitor as changed")
            for all_ids in self._ids_by_wd.values():
                changed.update(dict.fromkeys(all_ids))
            return
        ids = self._ids_by_wd.get(wd)
        if ids is None:
            return
        if mask & WATCH_MASK:
            changed.update(dict.fromkeys(ids))
        if mask & _IN_IGNORED:
            # The watch is gone (file deleted or unmounted). The kernel may later reuse
            # the wd number for another watch, so forget it now. As in uWSGI, a file
            # created again at that path is not watched.
            del self._ids_by_wd[wd]
            for watch_id in ids:
                logger.warning(
                    "file monitor on %s stopped: the path went away", self._paths[watch_id]
                )

    def poll_changed(self) -> list[int]:
        return []

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._inotify.close()


# (mtime_ns, ctime_ns, size, inode, mode, children); children only for a directory.
# The mode is there because ctime ticks with a coarse kernel clock: a chmod right after
# a write can leave ctime unchanged.
_Snapshot = tuple[int, int, int, int, int, frozenset[tuple[str, int, int, int, int]] | None]


def _child_entries(path: str) -> frozenset[tuple[str, int, int, int, int]]:
    entries: set[tuple[str, int, int, int, int]] = set()
    try:
        scan = os.scandir(path)
    except OSError:
        return frozenset()
    with scan:
        for entry in scan:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed between listing and stat: it is simply not there
            if stat.S_ISDIR(st.st_mode):
                # A sub-directory's times change when *its* children change, which
                # inotify does not report on the parent watch; keep only what does show.
                entries.add((entry.name, st.st_ino, st.st_uid, st.st_gid, st.st_mode))
            else:
                entries.add((entry.name, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode))
    return frozenset(entries)


def _snapshot(path: str) -> _Snapshot | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    children = _child_entries(path) if stat.S_ISDIR(st.st_mode) else None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode, children)


class StatPollBackend:
    """Portable fallback: compares stat snapshots each time :meth:`poll_changed` runs.

    A file is (mtime, ctime, size, inode, mode); a directory adds its direct children
    (a sub-directory by identity, owner and mode only, as inotify does not report
    changes inside it). Unlike inotify, a watch survives the deletion of its path: it
    fires on deletion and again when the path is created anew.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._watches: dict[int, tuple[str, _Snapshot | None]] = {}

    def add(self, path: str) -> int:
        watch_id = next(self._ids)
        try:
            os.stat(path)
        except OSError as exc:
            _warn_missing(path, exc)
            return watch_id
        self._watches[watch_id] = (path, _snapshot(path))
        return watch_id

    def fileno(self) -> int | None:
        return None

    def read_changed(self) -> list[int]:
        return []

    def poll_changed(self) -> list[int]:
        changed: list[int] = []
        for watch_id, (path, before) in self._watches.items():
            now = _snapshot(path)
            if now != before:
                self._watches[watch_id] = (path, now)
                changed.append(watch_id)
        return changed

    def close(self) -> None:
        self._watches.clear()


def make_file_monitor_backend() -> FileMonitorBackend:
    """inotify on Linux when ``inotify_simple`` imports and an instance can be made,
    else stat polling."""
    if sys.platform.startswith("linux"):
        try:
            return InotifyBackend()
        except (ImportError, OSError) as exc:
            # OSError: e.g. EMFILE when fs.inotify.max_user_instances is exhausted.
            logger.warning("inotify unavailable (%s); file monitors fall back to polling", exc)
    return StatPollBackend()
