"""File monitors (inotify and stat polling) and touch files, on real temporary files.

Every wait polls with a deadline; absence of an event is proven by waiting for a
control watch that did change, never by sleeping.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from muleteer import filemon
from muleteer.filemon import (
    WATCH_MASK,
    FileMonitorBackend,
    InotifyBackend,
    StatPollBackend,
    make_file_monitor_backend,
)
from muleteer.triggers import (
    TouchWatch,
    TriggerError,
    TriggerSet,
    parse_touch_signal_option,
)

pytestmark = pytest.mark.timeout(30)

DEADLINE = 5.0


def _inotify_available() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        InotifyBackend().close()
    except (ImportError, OSError):
        return False
    return True


HAVE_INOTIFY = _inotify_available()


@pytest.fixture(params=["inotify", "poll"])
def backend(request: pytest.FixtureRequest) -> Iterator[FileMonitorBackend]:
    if request.param == "inotify":
        if not HAVE_INOTIFY:
            pytest.skip("inotify not available here")
        made: FileMonitorBackend = InotifyBackend()
    else:
        made = StatPollBackend()
    try:
        yield made
    finally:
        made.close()


def changed_once(backend: FileMonitorBackend) -> list[int]:
    """One wake-up of the master: what the backend reports now."""
    return backend.read_changed() + backend.poll_changed()


def wait_for(backend: FileMonitorBackend, wanted: set[int]) -> list[int]:
    """Collect reported ids until every id in `wanted` was seen or the deadline passes."""
    seen: list[int] = []
    deadline = time.monotonic() + DEADLINE
    while True:
        seen += changed_once(backend)
        if wanted <= set(seen):
            return seen
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"ids {sorted(wanted - set(seen))} not reported; got {seen}")
        fd = backend.fileno()
        if fd is not None:
            select.select([fd], [], [], remaining)
        else:
            time.sleep(min(0.01, remaining))  # a polling backend: the master's tick


def write(path: Path, data: str) -> None:
    with open(path, "a") as f:
        f.write(data)


# ------------------------------------------------------------------ both backends


def test_modify_a_watched_file(backend: FileMonitorBackend, tmp_path: Path) -> None:
    target = tmp_path / "app.py"
    target.write_text("x = 1\n")
    wid = backend.add(str(target))
    assert changed_once(backend) == []
    write(target, "y = 2\n")
    assert wait_for(backend, {wid}) == [wid]
    assert changed_once(backend) == []


def test_attribute_changes(backend: FileMonitorBackend, tmp_path: Path) -> None:
    target = tmp_path / "reload"
    target.write_text("")
    wid = backend.add(str(target))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9 * 100))  # touch -d
    assert wait_for(backend, {wid}) == [wid]
    os.chmod(target, 0o600 if (st.st_mode & 0o777) != 0o600 else 0o640)
    assert wait_for(backend, {wid}) == [wid]


def test_many_changes_before_a_read_give_one_id_once(
    backend: FileMonitorBackend, tmp_path: Path
) -> None:
    target = tmp_path / "busy.log"
    target.write_text("")
    wid = backend.add(str(target))
    for i in range(200):
        write(target, f"line {i}\n")
    os.utime(target)
    fd = backend.fileno()
    if fd is not None:
        assert select.select([fd], [], [], DEADLINE)[0]
    assert changed_once(backend) == [wid]  # one wake-up drains everything
    assert changed_once(backend) == []


def test_directory_watch_sees_children_created_and_deleted(
    backend: FileMonitorBackend, tmp_path: Path
) -> None:
    watched = tmp_path / "conf.d"
    watched.mkdir()
    wid = backend.add(str(watched))
    child = watched / "new.ini"
    child.write_text("[uwsgi]\n")
    assert wait_for(backend, {wid}) == [wid]
    write(child, "master = true\n")
    assert wait_for(backend, {wid}) == [wid]
    child.unlink()
    assert wait_for(backend, {wid}) == [wid]
    (watched / "a").write_text("")
    os.rename(watched / "a", watched / "b")
    assert wid in wait_for(backend, {wid})


def test_directory_watch_covers_direct_children_only(
    backend: FileMonitorBackend, tmp_path: Path
) -> None:
    watched = tmp_path / "app"
    sub = watched / "__pycache__"
    sub.mkdir(parents=True)
    control = tmp_path / "control"
    control.write_text("")
    wid = backend.add(str(watched))
    cid = backend.add(str(control))
    (sub / "mod.cpython-311.pyc").write_bytes(b"\0" * 16)  # a grandchild
    write(control, "x")
    assert wait_for(backend, {cid}) == [cid]
    assert wid not in changed_once(backend)


def test_deleting_the_watched_file(backend: FileMonitorBackend, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("")
    wid = backend.add(str(target))
    target.unlink()
    assert wait_for(backend, {wid}) == [wid]


def test_non_existent_path_never_fires_and_warns_once(
    backend: FileMonitorBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "not-yet"
    control = tmp_path / "control"
    control.write_text("")
    with caplog.at_level(logging.WARNING, logger="muleteer.filemon"):
        wid = backend.add(str(missing))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(missing) in warnings[0].getMessage()
    cid = backend.add(str(control))
    missing.write_text("now it exists")
    write(missing, "and changes")
    write(control, "x")
    seen = wait_for(backend, {cid})
    assert wid not in seen
    assert wid not in changed_once(backend)
    assert wid != cid


def test_two_hundred_monitors_no_cap(backend: FileMonitorBackend, tmp_path: Path) -> None:
    paths = [tmp_path / f"f{i:03d}" for i in range(200)]
    for p in paths:
        p.write_text("")
    ids = [backend.add(str(p)) for p in paths]
    assert len(set(ids)) == 200
    for p in paths:
        write(p, "changed")
    seen = wait_for(backend, set(ids))
    assert sorted(seen) == sorted(ids)  # each once


def test_same_path_twice_reports_both_ids(backend: FileMonitorBackend, tmp_path: Path) -> None:
    target = tmp_path / "shared"
    target.write_text("")
    first = backend.add(str(target))
    second = backend.add(str(target))
    assert first != second
    write(target, "x")
    assert sorted(wait_for(backend, {first, second})) == sorted([first, second])


def test_close_is_idempotent(tmp_path: Path) -> None:
    for made in ([InotifyBackend()] if HAVE_INOTIFY else []) + [StatPollBackend()]:
        made.add(str(tmp_path))
        made.close()
        made.close()
        assert made.fileno() is None
        assert made.read_changed() == [] and made.poll_changed() == []


# ------------------------------------------------------------------ backend specifics


@pytest.mark.skipif(not HAVE_INOTIFY, reason="inotify not available here")
def test_inotify_fd_is_nonblocking_and_close_on_exec() -> None:
    backend = InotifyBackend()
    try:
        fd = backend.fileno()
        assert fd is not None
        assert not os.get_blocking(fd)
        assert not os.get_inheritable(fd)
        assert backend.read_changed() == []  # nothing pending: returns at once
        assert backend.poll_changed() == []
    finally:
        backend.close()


@pytest.mark.skipif(not HAVE_INOTIFY, reason="inotify not available here")
def test_inotify_watch_dies_with_its_file(tmp_path: Path) -> None:
    backend = InotifyBackend()
    try:
        target = tmp_path / "gone"
        target.write_text("")
        control = tmp_path / "control"
        control.write_text("")
        wid = backend.add(str(target))
        cid = backend.add(str(control))
        target.unlink()
        assert wait_for(backend, {wid}) == [wid]
        target.write_text("again")  # as in uWSGI: the new file is not watched
        write(control, "x")
        assert wid not in wait_for(backend, {cid})
    finally:
        backend.close()


def test_poll_watch_survives_deletion(tmp_path: Path) -> None:
    backend = StatPollBackend()
    target = tmp_path / "phoenix"
    target.write_text("")
    wid = backend.add(str(target))
    assert backend.fileno() is None and backend.read_changed() == []
    target.unlink()
    assert backend.poll_changed() == [wid]
    assert backend.poll_changed() == []
    target.write_text("reborn")
    assert backend.poll_changed() == [wid]


class _Event(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: str


class _FakeINotify:
    """Scripted stand-in for inotify_simple.INotify (overflow and IGNORED handling)."""

    def __init__(self, batches: list[list[tuple[int, int]]]) -> None:
        self.batches = batches
        self.reads = 0

    def add_watch(self, path: str, mask: int) -> int:
        assert mask == WATCH_MASK
        return {"a": 1, "b": 2}[path]

    def read(self, timeout: int) -> list[_Event]:
        assert timeout == 0
        self.reads += 1
        if not self.batches:
            return []
        return [_Event(wd, mask, 0, "") for wd, mask in self.batches.pop(0)]

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def _backend_with(fake: _FakeINotify) -> InotifyBackend:
    return InotifyBackend(inotify=fake)


def test_inotify_overflow_reports_every_watch(caplog: pytest.LogCaptureFixture) -> None:
    fake = _FakeINotify([[(-1, 0x4000)]])
    backend = _backend_with(fake)
    a, b = backend.add("a"), backend.add("b")
    with caplog.at_level(logging.WARNING, logger="muleteer.filemon"):
        assert sorted(backend.read_changed()) == [a, b]
    assert "overflow" in caplog.text


def test_inotify_ignored_forgets_the_wd() -> None:
    delete_self, ignored, modify = 0x400, 0x8000, 0x2
    fake = _FakeINotify([[(1, delete_self), (1, ignored)], [(1, modify), (2, modify)]])
    backend = _backend_with(fake)
    a, b = backend.add("a"), backend.add("b")
    # both batches are drained in one call; wd 1 reused afterwards is not reported as `a`
    assert backend.read_changed() == [a, b]


def test_inotify_drain_is_bounded() -> None:
    fake = _FakeINotify([[(1, 0x2)] for _ in range(1000)])
    backend = _backend_with(fake)
    a = backend.add("a")
    assert backend.read_changed() == [a]
    assert fake.reads == 64  # the rest stays queued for the next wake-up
    assert backend.read_changed() == [a]


def test_factory_prefers_inotify_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_file_monitor_backend()
    try:
        expected = InotifyBackend if HAVE_INOTIFY else StatPollBackend
        assert isinstance(made, expected)
    finally:
        made.close()
    monkeypatch.setattr(sys, "platform", "darwin")
    made = make_file_monitor_backend()
    assert isinstance(made, StatPollBackend)


def test_factory_falls_back_when_inotify_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(filemon, "InotifyBackend", broken)
    with caplog.at_level(logging.WARNING, logger="muleteer.filemon"):
        made = make_file_monitor_backend()
    assert isinstance(made, StatPollBackend)
    assert "fall back to polling" in caplog.text


# ------------------------------------------------------------------ touch files


def set_mtime(path: Path, mtime: float) -> None:
    os.utime(path, (mtime, mtime))


def test_touch_watch_reports_mtime_changes(tmp_path: Path) -> None:
    target = tmp_path / "touch-reload"
    target.write_text("")
    set_mtime(target, 1_700_000_000)
    watch = TouchWatch.create(str(target), "reload")
    assert watch.last_mtime == 1_700_000_000
    assert not watch.check()
    set_mtime(target, 1_700_000_100)
    assert watch.check()
    assert not watch.check()
    set_mtime(target, 1_600_000_000)  # moved back (a restored file) also counts
    assert watch.check()


def test_touch_watch_created_and_deleted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "later"
    with caplog.at_level(logging.WARNING, logger="muleteer.triggers"):
        watch = TouchWatch.create(str(target), "signal", 17)
    assert watch.last_mtime is None
    assert "triggered as soon as the file is created" in caplog.text
    assert not watch.check()
    target.write_text("")
    assert watch.check()
    assert not watch.check()
    target.unlink()
    assert watch.check()
    assert watch.last_mtime is None
    assert not watch.check()


def test_touch_watch_signal_validated() -> None:
    with pytest.raises(TriggerError, match="signal number"):
        TouchWatch("/x", "signal", 256, None)


def test_changed_touches(tmp_path: Path) -> None:
    ts = TriggerSet()
    files = [tmp_path / f"t{i}" for i in range(200)]
    for f in files:
        f.write_text("")
        set_mtime(f, 1_700_000_000)
    watches = [ts.add_touch(TouchWatch.create(str(f), "mules-reload")) for f in files]
    assert ts.changed_touches() == []
    set_mtime(files[3], 1_700_000_001)
    set_mtime(files[150], 1_700_000_001)
    assert ts.changed_touches() == [watches[3], watches[150]]
    assert ts.changed_touches() == []
    assert len(ts.touches) == 200


def test_parse_touch_signal_option() -> None:
    assert parse_touch_signal_option("/tmp/reload-me 17") == ("/tmp/reload-me", 17)
    assert parse_touch_signal_option("/srv/my app/flag  0 ") == ("/srv/my app/flag", 0)


@pytest.mark.parametrize("value", ["/tmp/x", "", "/tmp/x seventeen", "17"])
def test_parse_touch_signal_option_syntax(value: str) -> None:
    with pytest.raises(TriggerError) as info:
        parse_touch_signal_option(value)
    assert str(info.value) == "invalid touch-signal syntax, must be: <file> <signal>"
    with pytest.raises(TriggerError, match="invalid fs-signal syntax"):
        parse_touch_signal_option(value, option="fs-signal")


def test_parse_touch_signal_option_range() -> None:
    with pytest.raises(TriggerError, match="out of range"):
        parse_touch_signal_option("/tmp/x 256")
