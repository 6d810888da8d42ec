"""The master's one selector loop: every event source in one place, no fixed sleep.

Sources: the wakeup socket that OS signal handlers write to, the children's inbox, the
file-monitor descriptor, channels holding undelivered signal bytes (until writable), the
stats server and its clients, and the master FIFO. After each wake-up the loop reaps
children, fires due triggers, enforces deadlines (harakiri, mercy, back-off), steps a
chain reload, pings systemd, and spawns what is due. The wait is bounded by the nearest
deadline (see ``Master.timeout``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

from muleteer import options as o
from muleteer.arbiter import MASTER_SIGNALS, Master, Phase
from muleteer.fifo import FifoError, MasterFifo
from muleteer.poller import READ as POLL_READ
from muleteer.poller import WRITE as POLL_WRITE
from muleteer.poller import Poller
from muleteer.sockets import AddressError
from muleteer.stats import snapshot
from muleteer.stats_server import READ, StatsAddressError, StatsServer
from muleteer.systemd import Notifier

log = logging.getLogger(__name__)

_EVENTS = {READ: POLL_READ, 2: POLL_WRITE}


class FdSet:
    """Keeps the poller's registrations equal to what the components want now."""

    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        self.current: dict[int, tuple[int, str]] = {}

    def sync(self, wanted: dict[int, tuple[int, str]]) -> None:
        for fd in [fd for fd in self.current if fd not in wanted]:
            self.poller.unregister(fd)
            del self.current[fd]
        for fd, interest in wanted.items():
            before = self.current.get(fd)
            if before is None:
                self.poller.register(fd, interest[0])
            elif before[0] != interest[0]:
                self.poller.modify(fd, interest[0])
            self.current[fd] = interest

    def forget(self, fd: int) -> None:
        """`fd` was closed (so the kernel already unregistered it): drop our record."""
        self.current.pop(fd, None)

    def tag(self, fd: int) -> str:
        interest = self.current.get(fd)
        return "" if interest is None else interest[1]


class MasterLoop:
    def __init__(self, master: Master) -> None:
        self.master = master
        config = master.config
        self.notifier = Notifier()
        self.ready_sent = False
        self.housekeeping = True
        self._selector: Poller | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.stats: StatsServer | None = None
        address = config.get(o.STATS)
        if address:
            try:
                self.stats = StatsServer(
                    address,
                    config.get(o.STATS_HTTP),
                    config.get(o.STATS_MINIFIED),
                    config.get(o.STATS_ALLOW_PUBLIC),
                    lambda: snapshot(master),
                )
            except (StatsAddressError, AddressError, OSError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                log.error("option 'stats': cannot serve on %r: %s", address, reason)
                raise SystemExit(1) from None
        self.fifos: list[MasterFifo] = []
        for path in config.get(o.MASTER_FIFO):
            try:
                self.fifos.append(MasterFifo(path))
            except (FifoError, OSError) as exc:
                log.error("option 'master-fifo': %s", exc)
                raise SystemExit(1) from None

    def close_in_child(self) -> None:
        """In a freshly forked child: drop what belongs to the master alone.

        A child that kept a stats client's connection would keep it open after the master
        finished with it (the client would wait for an end that never comes); one that kept
        the FIFO, the stats listener or the master's selector would hold them past the
        master's life.
        """
        if self.stats is not None:
            for client in list(self.stats.clients.values()):
                client.sock.close()
            self.stats.listener.sock.close()
        for fifo in self.fifos:
            for fd in (fifo.fd, fifo.keep_open):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for item in (self._selector, self._wake_r, self._wake_w):
            if item is not None:
                item.close()

    def _install_signals(self) -> socket.socket:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        # Handlers do nothing: set_wakeup_fd writes each signal number to the socket and
        # the loop acts on it. Nothing is logged or reaped inside a handler.
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in MASTER_SIGNALS:
            signal.signal(signum, lambda s, f: None)
        # A reload blocks these signals before exec (a SIGHUP during the new master's
        # start-up would otherwise kill it); pending ones are delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
        self._wake_w = wake_w  # kept alive for the life of the loop
        self._wake_r = wake_r
        return wake_r

    def _wanted(self, wake_r: socket.socket) -> dict[int, tuple[int, str]]:
        master = self.master
        wanted = {
            wake_r.fileno(): (POLL_READ, "signals"),
            master.channels.inbox_recv.fileno(): (POLL_READ, "inbox"),
        }
        filemon = master.hub.filemon_fd()
        if filemon is not None:
            wanted[filemon] = (POLL_READ, "filemon")
        for fd in master.hub.write_wanted():
            wanted[fd] = (POLL_WRITE, "held")
        if self.stats is not None:
            wanted[self.stats.fileno()] = (POLL_READ, "stats")
            for fd, events in self.stats.interest().items():
                wanted[fd] = (_EVENTS[events], "stats-client")
        for fifo in self.fifos:
            wanted[fifo.fileno()] = (POLL_READ, "fifo")
        return wanted

    def _notify(self) -> None:
        master = self.master
        if not self.ready_sent and master.all_up():
            self.ready_sent = True
            workers = sum(1 for s in master.slots if s.kind == "worker")
            mules = len(master.slots) - workers
            self.notifier.ready(f"{workers} worker(s) and {mules} mule(s) up")

    def run(self) -> None:
        master = self.master
        wake_r = self._install_signals()
        selector = Poller()
        self._selector = selector
        master.child_cleanup.append(self.close_in_child)
        fds = FdSet(selector)
        now = time.monotonic()
        for slot in master.slots:
            master.spawn(slot, now)
        next_tick = 0.0
        phase = master.phase
        signature: tuple[object, ...] = ()
        while True:
            # Registrations change only when a channel starts or stops holding signals,
            # a stats client comes or goes, or a file monitor appears: skip the rest.
            current = (
                master.hub.delivery.transitions,
                self.stats.changes if self.stats is not None else 0,
                master.hub.filemon_fd(),
            )
            if current != signature:
                if self.stats is not None:
                    for fd in self.stats.take_closed():
                        fds.forget(fd)
                fds.sync(self._wanted(wake_r))
                signature = current
            now = time.monotonic()
            timeout = master.timeout(now)
            if self.stats is not None:
                deadline = self.stats.next_deadline()
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - now))
            ping = self.notifier.tick(now)
            if ping is not None:
                timeout = min(timeout, max(0.0, ping - now))
            due_at = now + timeout
            events = selector.wait(timeout)
            for fd, _ in events:
                self._dispatch(fds.tag(fd), fd, wake_r)
            now = time.monotonic()
            # Routing a signal or a message from the inbox needs nothing more. The rest -
            # reaping, deadlines, crons, respawns - runs when an OS signal or a command
            # came in, or when the deadline this wait was computed for has passed.
            if not (self.housekeeping or not events or now >= due_at):
                for num in master.hub.triggers.due_timers(now):
                    master.hub.raise_signal(num, "timer")
                continue
            self.housekeeping = False
            master.reap()
            if master.phase is Phase.RUNNING:
                # Crons and touch files are checked once per check interval; timers
                # whenever their deadline passes.
                if now >= next_tick:
                    next_tick = now + master.check_interval
                    master.apply(master.hub.tick(time.time()))
                else:
                    for num in master.hub.triggers.due_timers(now):
                        master.hub.raise_signal(num, "timer")
                master.step_chain(now)
            if self.stats is not None:
                self.stats.expire(now)
            master.check_deadlines(now)
            master.maintain(now)
            if master.phase is not phase:
                phase = master.phase
                if phase is Phase.RELOADING:
                    self.notifier.reloading()
                elif phase is Phase.STOPPING:
                    self.notifier.stopping()
            self._notify()
            if master.phase is not Phase.RUNNING and not master.by_pid:
                break
        selector.close()
        self.close()

    def _dispatch(self, tag: str, fd: int, wake_r: socket.socket) -> None:
        master = self.master
        if tag == "signals":
            self.housekeeping = True
            try:
                data = wake_r.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            for signum in data:
                master.on_os_signal(signum)
        elif tag == "inbox":
            master.hub.drain_inbox(master.channels.inbox_recv)
        elif tag == "filemon":
            self.housekeeping = True
            master.apply(master.hub.read_filemon())
        elif tag == "held":
            master.hub.on_writable(fd)
        elif tag in ("stats", "stats-client") and self.stats is not None:
            # A bug in building the stats must cost one client, never the master.
            try:
                if tag == "stats":
                    self.stats.accept(time.monotonic())
                else:
                    self.stats.on_event(fd)
            except Exception:
                log.exception("stats server error")
                self.stats.drop_all()
        elif tag == "fifo":
            self.housekeeping = True
            for fifo in self.fifos:
                if fifo.fileno() == fd:
                    for command in fifo.read():
                        master.on_fifo_command(command)

    def close(self) -> None:
        if self.stats is not None:
            self.stats.close()
        for fifo in self.fifos:
            fifo.close()
