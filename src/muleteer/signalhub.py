"""The master's side of the signal framework: the :class:`MasterPort` implementation.

Everything that raises a signal ends here: ``uwsgi.signal()`` in the master (a direct
call) or in a child (a datagram on the inbox), timers, rb-timers, crons, file monitors
and touch files. The hub routes with the master's :class:`SignalTable` and writes through
:class:`Delivery`, which holds what a full channel cannot take. Timing is computed from
an injected clock so the loop is testable.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from muleteer import triggers
from muleteer.filemon import FileMonitorBackend, make_file_monitor_backend
from muleteer.ipc import Channels
from muleteer.signals import MASTER, Delivery, SignalTable
from muleteer.triggers import Cron, TriggerError, TriggerSet

log = logging.getLogger(__name__)

_WARN_EVERY = 5.0


@dataclass
class FileMonitor:
    signum: int
    path: str
    watch: int
    fired: int = 0


@dataclass
class HubActions:
    """What a tick asks the master itself to do (reloads and command crons)."""

    reload: list[str] = field(default_factory=list)  # touch-reload / fs-reload paths
    mules_reload: list[str] = field(default_factory=list)
    workers_reload: list[str] = field(default_factory=list)
    chain_reload: list[str] = field(default_factory=list)
    commands: list[Cron] = field(default_factory=list)


class SignalHub:
    def __init__(
        self,
        channels: Channels,
        workers: int,
        mules: int,
        active_workers: Callable[[], Iterable[int]],
        clock: Callable[[], float] = time.monotonic,
        max_held: int = 10_000,
    ) -> None:
        self.channels = channels
        self.table = SignalTable(workers, mules, list(channels.farm_members))
        self.active_workers = active_workers
        self.clock = clock
        sockets: dict[str, socket.socket] = {
            "any worker": channels.any_worker.send,
            "any mule": channels.any_mule.send,
        }
        for i in range(1, workers + 1):
            sockets[f"worker {i}"] = channels.worker_signals[i].send
        for i in range(1, mules + 1):
            sockets[f"mule {i}"] = channels.mule_signals[i].send
        for name, channel in channels.farm_signals.items():
            sockets[f"farm {name}"] = channel.send
        self.by_fd = {sock.fileno(): name for name, sock in sockets.items()}
        self.delivery = Delivery(sockets, max_held, self._dropped)
        self.triggers = TriggerSet()
        self._filemon: FileMonitorBackend | None = None
        self.file_monitors: list[FileMonitor] = []
        self.fs_reloads: dict[int, str] = {}  # watch id -> path (--fs-reload)
        self._child_triggers: set[tuple[object, ...]] = set()
        self._last_drop_warning: dict[str, float] = {}
        self.raised_from_children = 0

    # -- MasterPort --------------------------------------------------------------------------

    def raise_signal(self, num: int, origin: str) -> None:
        names = self.table.route(num, self.active_workers)
        if not names:
            self.delivery.drop("nowhere", num)
            return
        for name in names:
            self.delivery.send(name, num)

    def register_signal(self, num: int, target: str, registrant: str) -> None:
        entry = self.table.register(num, target, registrant)
        log.info(
            "[uwsgi-signal] signum %d registered (by %s, target: %s)",
            num,
            registrant,
            target or "default, any worker",
        )
        del entry

    def _seen(self, origin: str, *key: object) -> bool:
        """A child re-registering after a respawn (or each lazy-apps worker) must not add
        one more trigger each time; the master's own registrations are never merged
        (uWSGI does not de-duplicate them either)."""
        if origin == MASTER:
            return False
        if key in self._child_triggers:
            log.debug("%s for signal %d from %s already exists", key[0], key[1], origin)
            return True
        self._child_triggers.add(key)
        return False

    def add_timer(self, num: int, seconds: float, origin: str) -> None:
        if not self._seen(origin, "timer", num, seconds):
            self.triggers.add_timer(num, seconds, self.clock())

    def add_rb_timer(self, num: int, seconds: float, iterations: int, origin: str) -> None:
        if not self._seen(origin, "rb_timer", num, seconds, iterations):
            self.triggers.add_rb_timer(num, seconds, iterations, self.clock())

    def add_cron(self, num: int, fields: tuple[int, int, int, int, int], origin: str) -> None:
        if not self._seen(origin, "cron", num, *fields):
            self.triggers.add_cron(Cron(num, *fields))

    @property
    def filemon(self) -> FileMonitorBackend:
        if self._filemon is None:
            self._filemon = make_file_monitor_backend()
        return self._filemon

    def add_file_monitor(self, num: int, path: str, origin: str) -> None:
        if self._seen(origin, "filemon", num, path):
            return
        watch = self.filemon.add(path)
        self.file_monitors.append(FileMonitor(num, path, watch))

    def add_fs_reload(self, path: str) -> None:
        self.fs_reloads[self.filemon.add(path)] = path

    # -- inbox -----------------------------------------------------------------------------

    def drain_inbox(self, sock: socket.socket) -> None:
        """Handle every request children queued (at most a bounded batch per call)."""
        for _ in range(4096):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            kind = data[:1]
            if kind == b"S" and len(data) == 2:
                self.raised_from_children += 1
                self.raise_signal(data[1], "child")
            elif kind == b"J":
                self._request(data[1:])
            else:
                log.warning("ignoring a malformed inbox message of %d bytes", len(data))

    def _request(self, payload: bytes) -> None:
        try:
            req = json.loads(payload)
            op = req["op"]
            num = int(req["num"]) % 256
            origin = str(req.get("by", "child"))
            if op == "register":
                self.register_signal(num, str(req["target"]), origin)
            elif op == "timer":
                self.add_timer(num, float(req["seconds"]), origin)
            elif op == "rb_timer":
                self.add_rb_timer(num, float(req["seconds"]), int(req["iterations"]), origin)
            elif op == "cron":
                fields = tuple(int(x) for x in req["fields"])
                self.add_cron(num, (fields[0], fields[1], fields[2], fields[3], fields[4]), origin)
            elif op == "filemon":
                self.add_file_monitor(num, str(req["path"]), origin)
            else:
                log.warning("ignoring unknown inbox request %r", op)
        except (ValueError, KeyError, TypeError, IndexError, TriggerError) as exc:
            log.warning("ignoring an invalid inbox request: %s", exc)

    # -- delivery ----------------------------------------------------------------------------

    def _dropped(self, name: str, num: int) -> None:
        now = time.monotonic()
        if now - self._last_drop_warning.get(name, 0.0) >= _WARN_EVERY:
            self._last_drop_warning[name] = now
            held = self.delivery.held_count(name) if name in self.delivery.held else 0
            log.warning(
                "*** could not deliver signal %d to %s: dropped (%d held; %d dropped so far) ***",
                num,
                name,
                held,
                sum(self.delivery.dropped_by_num.values()),
            )

    def write_wanted(self) -> list[int]:
        """fds of channels holding signals (the loop waits until they are writable)."""
        return [self.delivery.sockets[name].fileno() for name in self.delivery.pending_names()]

    def on_writable(self, fd: int) -> None:
        name = self.by_fd.get(fd)
        if name is not None:
            self.delivery.flush(name)

    # -- triggers ------------------------------------------------------------------------------

    def filemon_fd(self) -> int | None:
        return None if self._filemon is None else self._filemon.fileno()

    def on_filemon(self, watches: list[int], actions: HubActions) -> None:
        for monitor in self.file_monitors:
            if monitor.watch in watches:
                monitor.fired += 1
                self.raise_signal(monitor.signum, "filemon")
        for watch in watches:
            path = self.fs_reloads.get(watch)
            if path is not None:
                actions.reload.append(path)

    def next_deadline(self) -> float | None:
        return self.triggers.next_deadline(self.clock())

    def tick(self, wall: float | None = None) -> HubActions:
        """Fire everything due now. Called on every loop turn (timers) and about once a
        second (crons, touch files, polled file monitors)."""
        actions = HubActions()
        for num in self.triggers.due_timers(self.clock()):
            self.raise_signal(num, "timer")
        wall = time.time() if wall is None else wall
        for cron in self.triggers.due_crons(wall, time.localtime(wall)):
            if cron.command is not None:
                actions.commands.append(cron)
            elif cron.signum is not None:
                log.debug("[uwsgi-cron] routing signal %d", cron.signum)
                self.raise_signal(cron.signum, "cron")
        for watch in self.triggers.changed_touches():
            if watch.action == "signal" and watch.signum is not None:
                self.raise_signal(watch.signum, "touch")
            elif watch.action == "reload":
                actions.reload.append(watch.path)
            elif watch.action == "mules-reload":
                actions.mules_reload.append(watch.path)
            elif watch.action == "workers-reload":
                actions.workers_reload.append(watch.path)
            elif watch.action == "chain-reload":
                actions.chain_reload.append(watch.path)
        if self._filemon is not None and self._filemon.fileno() is None:
            changed = self._filemon.poll_changed()
            if changed:
                self.on_filemon(changed, actions)
        return actions

    def read_filemon(self) -> HubActions:
        actions = HubActions()
        if self._filemon is not None:
            changed = self._filemon.read_changed()
            if changed:
                self.on_filemon(changed, actions)
        return actions

    def add_touch(self, path: str, action: str, signum: int | None = None) -> None:
        self.triggers.add_touch(triggers.TouchWatch.create(path, action, signum))

    def close(self) -> None:
        if self._filemon is not None:
            self._filemon.close()
            self._filemon = None
