"""What the current process is, and the signal operations every process shares.

Each process of the server (master, worker N, mule N) has exactly one :class:`Runtime`,
reachable as ``runtime.current()``. The ``uwsgi`` facade is a thin layer over it. The
master-only operations (routing, timers, crons, file monitors) go through a
:class:`MasterPort`: in the master it is the master loop itself; in a child it is the
inbox, so a registration made after fork reaches the master (DESIGN.md deviation 4).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from muleteer import options as o
from muleteer.config import Config
from muleteer.ipc import Channels
from muleteer.scoreboard import F, I, Scoreboard, Status

log = logging.getLogger(__name__)

SignalHandler = Callable[[int], Any]


class MasterPort(Protocol):
    """Operations only the master performs; children reach them through the inbox."""

    def raise_signal(self, num: int, origin: str) -> None: ...
    def register_signal(self, num: int, target: str, registrant: str) -> None: ...
    def add_timer(self, num: int, seconds: float, origin: str) -> None: ...
    def add_rb_timer(self, num: int, seconds: float, iterations: int, origin: str) -> None: ...
    def add_cron(self, num: int, fields: tuple[int, int, int, int, int], origin: str) -> None: ...
    def add_file_monitor(self, num: int, path: str, origin: str) -> None: ...


class InboxPort:
    """A child's way to the master: one datagram per request on the inbox socket.

    A raise is two bytes (``S`` + number); anything else is ``J`` + a small JSON object.
    The inbox is drained by the master's loop continuously, so a full inbox only means a
    burst: the sender waits for room (up to ``wait`` seconds) instead of losing the request.
    """

    def __init__(self, sock: socket.socket, wait: float = 10.0) -> None:
        self.sock = sock
        self.wait = wait

    def _send(self, data: bytes, what: str) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                self.sock.send(data)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    log.error("could not send %s to the master: %s", what, exc)
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("could not send %s to the master: its inbox stayed full", what)
                return
            select.select([], [self.sock], [], min(remaining, 0.05))

    def raise_signal(self, num: int, origin: str) -> None:
        self._send(b"S" + bytes((num,)), f"signal {num}")

    def _json(self, **fields: Any) -> None:
        self._send(b"J" + json.dumps(fields).encode(), str(fields.get("op")))

    def register_signal(self, num: int, target: str, registrant: str) -> None:
        self._json(op="register", num=num, target=target, by=registrant)

    def add_timer(self, num: int, seconds: float, origin: str) -> None:
        self._json(op="timer", num=num, seconds=seconds, by=origin)

    def add_rb_timer(self, num: int, seconds: float, iterations: int, origin: str) -> None:
        self._json(op="rb_timer", num=num, seconds=seconds, iterations=iterations, by=origin)

    def add_cron(self, num: int, fields: tuple[int, int, int, int, int], origin: str) -> None:
        self._json(op="cron", num=num, fields=list(fields), by=origin)

    def add_file_monitor(self, num: int, path: str, origin: str) -> None:
        self._json(op="filemon", num=num, path=path, by=origin)


class MasterDied(SystemExit):
    """Raised in a child that notices the master is gone; the process then exits."""

    def __init__(self) -> None:
        super().__init__(1)


@dataclass
class Runtime:
    role: str  # "master", "worker" or "mule"
    id: int  # worker or mule id; 0 in the master
    config: Config
    channels: Channels
    scoreboard: Scoreboard
    master_pid: int
    port: MasterPort
    started_on: int = field(default_factory=lambda: int(time.time()))
    handlers: MutableMapping[int, SignalHandler] = field(default_factory=dict)
    locks: list[Any] = field(default_factory=list)
    module: ModuleType | None = None
    listener_fds: list[int] = field(default_factory=list)
    slot: int = 0
    msg_cache: Any = None  # messaging's per-process lookup tables (built on first use)
    _local: threading.local = field(default_factory=threading.local)

    @property
    def name(self) -> str:
        return "master" if self.role == "master" else f"{self.role} {self.id}"

    # -- signal handlers in this process ---------------------------------------------------

    def register(self, num: int, target: str, handler: SignalHandler) -> None:
        if self.role == "master":
            if num in self.handlers:
                # uWSGI refuses this too ("you cannot re-register a signal as the master").
                raise ValueError("unable to register signal")
            self.handlers[num] = handler
        else:
            self.handlers[num] = handler
        self.port.register_signal(num, target, self.name)

    def run_handler(self, num: int) -> bool:
        """Run the handler of `num` in the calling thread, with accounting and harakiri.

        An exception is logged with the signal number and the process lives on.
        """
        handler = self.handlers.get(num)
        if handler is None:
            log.error("error managing signal %d on %s: no handler registered here", num, self.name)
            return False
        sb, slot = self.scoreboard, self.slot
        base, fbase = slot * I.COUNT, slot * F.COUNT
        previous_status = sb.ints[base + I.STATUS]
        previous_deadline = sb.floats[fbase + F.HARAKIRI]
        limit = self.config.get(o.MULE_HARAKIRI if self.role == "mule" else o.HARAKIRI)
        sb.ints[base + I.STATUS] = Status.SIGNAL
        sb.ints[base + I.SIGNUM] = num
        if limit > 0:
            sb.floats[fbase + F.HARAKIRI] = time.monotonic() + limit
            sb.floats[fbase + F.HARAKIRI_SIGNAL] = num
        try:
            handler(num)
            return True
        except Exception:
            log.exception("signal %d handler raised on %s", num, self.name)
            return False
        finally:
            sb.ints[base + I.SIGNALS] += 1
            sb.ints[base + I.STATUS] = previous_status
            sb.floats[fbase + F.HARAKIRI] = previous_deadline

    # -- waiting for signals ---------------------------------------------------------------

    def signal_sockets(self) -> list[socket.socket]:
        """The channels this process reads signals from (own first, then the shared one)."""
        ch = self.channels
        if self.role == "worker":
            return [ch.worker_signals[self.id].recv, ch.any_worker.recv]
        if self.role == "mule":
            return [ch.mule_signals[self.id].recv, ch.any_mule.recv]
        return []

    def read_signal(self, sock: socket.socket) -> int | None:
        """Take one signal byte, or None when another reader was faster."""
        try:
            data = sock.recv(1)
        except (BlockingIOError, InterruptedError):
            return None
        if not data:
            raise MasterDied()
        return data[0]

    def check_master(self) -> None:
        try:
            if os.read(self.channels.death_r, 1) == b"":
                raise MasterDied()
        except BlockingIOError:
            pass

    def signal_wait(self, wanted: int | None) -> bytes:
        """uWSGI's ``signal_wait``: block until a signal arrives (run its handler first)."""
        if self.role == "master":
            raise SystemError(
                "uwsgi.signal_wait() cannot be used in the master (it would block it before "
                "any worker or mule starts); call it in a worker or a mule"
            )
        sockets = self.signal_sockets()
        self._local.received = -1
        poller = select.poll()
        for sock in sockets:
            poller.register(sock.fileno(), select.POLLIN)
        poller.register(self.channels.death_r, select.POLLIN)
        by_fd = {sock.fileno(): sock for sock in sockets}
        while True:
            try:
                ready = poller.poll()
            except InterruptedError:
                continue
            for fd, _ in ready:
                if fd == self.channels.death_r:
                    self.check_master()
                    continue
                num = self.read_signal(by_fd[fd])
                if num is None:
                    continue
                if num in self.handlers:
                    self.run_handler(num)
                if wanted is not None and num != wanted:
                    continue
                self._local.received = num
                return b""

    def signal_received(self) -> int:
        return int(getattr(self._local, "received", 0))


# The runtime of this process. messaging.mule_msg reads it directly (not through
# current()) to keep the hottest ``uwsgi`` call at one Python frame.
_CURRENT: Runtime | None = None


def current() -> Runtime:
    if _CURRENT is None:
        raise RuntimeError("not running inside a muleteer server process")
    return _CURRENT


def get() -> Runtime | None:
    return _CURRENT


def install(runtime: Runtime) -> None:
    global _CURRENT
    _CURRENT = runtime


def uninstall() -> None:
    global _CURRENT
    _CURRENT = None
