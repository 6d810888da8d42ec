"""Test code written for uWSGI without a server: an in-process ``uwsgi`` module.

``install()`` builds the same ``uwsgi`` module the server gives its processes, on top of
the same signal table, router, delivery, triggers (timers, rb-timers, uWSGI cron rules)
and message queues - not a second copy - with virtual workers and mules instead of
forked processes and a fake clock instead of time passing::

    from muleteer import testing

    env = testing.install(workers=2, mules=2)
    myapp = env.load("myapp")        # @timer/@signal/@cron/@filemon register as in the master
    env.advance(30)                  # the 30 s timer fires; its handler runs "in" a mule
    assert env.handled[-1].process == "mule 1"
    with env.mule(2):
        assert uwsgi.mule_id() == 2
    env.uninstall()

With pytest, the ``uwsgi_env`` fixture does this and always uninstalls. Signals raised
with ``uwsgi.signal()``, and messages sent with ``uwsgi.mule_msg()``, are delivered at once
(``auto_dispatch``): the handler or the message hook runs in the target virtual process
before the call returns. Messages for programmed mules stay queued until the test reads
them with ``uwsgi.mule_get_msg()`` inside ``env.mule(n)``.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import importlib
import os
import sys
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from muleteer import cli, mule, runtime
from muleteer import options as o
from muleteer.compat import uwsgi as uwsgi_module
from muleteer.ipc import Channels
from muleteer.locks import make_locks
from muleteer.runtime import Runtime
from muleteer.scoreboard import I, Scoreboard
from muleteer.signalhub import SignalHub


@dataclass(frozen=True)
class Raised:
    num: int
    origin: str  # "master", "worker 1", "mule 2", "timer", "cron", "filemon"
    at: float  # fake wall-clock time


@dataclass(frozen=True)
class Handled:
    num: int
    process: str  # "worker 1", "mule 2"
    ok: bool
    at: float


class FakeClock:
    """Monotonic and wall time that move only when the test says so."""

    def __init__(self, start: datetime.datetime | None = None) -> None:
        start = start or datetime.datetime(2026, 1, 5, 0, 0, 0)  # a Monday, 00:00 local
        self.wall = start.timestamp()
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.wall)


class _Process(Runtime):
    """A virtual worker or mule: records every handler it runs."""

    harness: Harness | None = None

    def run_handler(self, num: int) -> bool:
        ok = super().run_handler(num)
        if self.harness is not None:
            self.harness.handled.append(Handled(num, self.name, ok, self.harness.clock.wall))
        return ok


class _RecordingHub(SignalHub):
    harness: Harness | None = None

    def raise_signal(self, num: int, origin: str) -> None:
        if self.harness is not None:
            self.harness.raised.append(Raised(num, origin, self.harness.clock.wall))
        super().raise_signal(num, origin)


@dataclass
class Harness:
    workers: int = 1
    mules: int = 0
    farms: dict[str, tuple[int, ...]] = field(default_factory=dict)
    options: Sequence[str] = ()
    start: datetime.datetime | None = None
    auto_dispatch: bool = True
    raised: list[Raised] = field(default_factory=list)
    handled: list[Handled] = field(default_factory=list)

    def __post_init__(self) -> None:
        argv = ["--processes", str(self.workers), *self.options]
        if self.mules:
            argv.append(f"--mules={self.mules}")
        for name, ids in self.farms.items():
            argv += ["--farm", f"{name}:{','.join(map(str, ids))}"]
        self.config = cli.load_config(argv, {})
        self.clock = FakeClock(self.start)
        mule_count = len(self.config.mules)
        self.channels = Channels.create(self.workers, mule_count, dict(self.farms))
        self.scoreboard = Scoreboard(
            self.workers, mule_count, [q.name for q in self.channels.queues()]
        )
        self.hub = _RecordingHub(
            self.channels,
            self.workers,
            mule_count,
            lambda: range(1, self.workers + 1),
            clock=self.clock.monotonic,
        )
        self.hub.harness = self
        locks = make_locks(1 + self.config.get(o.LOCKS))
        self.master = _Process(
            "master",
            0,
            self.config,
            self.channels,
            self.scoreboard,
            os.getpid(),
            self.hub,
            locks=locks,
        )
        self.master.harness = self
        self.processes: dict[str, _Process] = {}
        for kind, count in (("worker", self.workers), ("mule", mule_count)):
            for ident in range(1, count + 1):
                proc = _Process(
                    kind,
                    ident,
                    self.config,
                    self.channels,
                    self.scoreboard,
                    os.getpid(),
                    self.hub,
                    locks=locks,
                    handlers=collections.ChainMap({}, self.master.handlers),
                )
                proc.slot = (
                    self.scoreboard.worker_slot(ident)
                    if kind == "worker"
                    else self.scoreboard.mule_slot(ident)
                )
                proc.harness = self
                self.processes[proc.name] = proc
        self.module = uwsgi_module.build(self.config.opt, self.workers, False)
        self._wrap_module()
        for proc in (self.master, *self.processes.values()):
            proc.module = self.module
        self._rotor: dict[str, int] = {}
        self._saved: dict[str, types.ModuleType | None] = {}
        self._dispatching = False
        self._current = self.master

    # -- installation ------------------------------------------------------------------------

    def _wrap_module(self) -> None:
        module = self.module
        raw_signal, raw_mule_msg, raw_farm_msg = module.signal, module.mule_msg, module.farm_msg

        def signal(num: int, remote: str | None = None) -> None:
            raw_signal(num, remote)
            self._auto()

        def mule_msg(message: Any, target: Any = None, **kw: Any) -> bool:
            result: bool = raw_mule_msg(message, target, **kw)
            self._auto()
            return result

        def farm_msg(farm: Any, message: Any) -> bool:
            result: bool = raw_farm_msg(farm, message)
            self._auto()
            return result

        module.signal = signal  # type: ignore[attr-defined]
        module.mule_msg = mule_msg  # type: ignore[attr-defined]
        module.farm_msg = farm_msg  # type: ignore[attr-defined]

    def install(self) -> Harness:
        """Put this ``uwsgi`` (and, unless a real one exists, ``uwsgidecorators``) in
        ``sys.modules``, with the master as the current process."""
        for name in ("uwsgi", "uwsgidecorators"):
            self._saved[name] = sys.modules.pop(name, None)
        uwsgi_module.install(self.module)
        runtime.install(self.master)
        return self

    def uninstall(self) -> None:
        for name, module in self._saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        runtime.uninstall()
        self.hub.close()
        self.channels.close()

    def load(self, name: str) -> types.ModuleType:
        """Import (or import again) module `name` under this harness, as the master does."""
        sys.modules.pop(name, None)
        with self.process(self.master):
            return importlib.import_module(name)

    # -- which process is "current" -----------------------------------------------------------

    @contextlib.contextmanager
    def process(self, proc: _Process) -> Iterator[_Process]:
        previous = self._current
        self._current = proc
        runtime.install(proc)
        try:
            yield proc
        finally:
            self._current = previous
            runtime.install(previous)

    def worker(self, ident: int) -> contextlib.AbstractContextManager[_Process]:
        return self.process(self.processes[f"worker {ident}"])

    def mule(self, ident: int) -> contextlib.AbstractContextManager[_Process]:
        return self.process(self.processes[f"mule {ident}"])

    def fork(self) -> None:
        """Run ``uwsgi.post_fork_hook`` in every virtual worker and mule (``@postfork``).
        Hooks that loop forever (``@muleloop``, ``@mulemsg``, ``@farm``) must not be
        registered in code tested this way."""
        hook = getattr(self.module, "post_fork_hook", None)
        if callable(hook):
            for proc in self.processes.values():
                with self.process(proc):
                    hook()

    # -- delivery --------------------------------------------------------------------------

    def _auto(self) -> None:
        if self.auto_dispatch:
            self.dispatch()

    def _members(self, channel: str) -> list[_Process]:
        if channel == "any worker":
            return [p for p in self.processes.values() if p.role == "worker"]
        if channel == "any mule":
            return [p for p in self.processes.values() if p.role == "mule"]
        if channel.startswith("farm "):
            ids = self.channels.farm_members[channel[5:]]
            return [self.processes[f"mule {i}"] for i in ids]
        return [self.processes[channel]]

    def _next_member(self, channel: str) -> _Process:
        return self._rotate(channel, self._members(channel))

    def _rotate(self, key: str, members: list[_Process]) -> _Process:
        """Take turns among `members` (the kernel hands a shared channel's bytes to
        whichever reader is first; here they simply alternate)."""
        position = self._rotor.get(key, -1) + 1
        self._rotor[key] = position % len(members)
        return members[position % len(members)]

    def dispatch(self) -> int:
        """Deliver everything pending: signal bytes to handlers, messages to the hooks of
        signal-only mules. Returns how many things were delivered."""
        if self._dispatching:
            return 0
        self._dispatching = True
        done = 0
        try:
            while True:
                progress = self._drain_signals() + self._drain_messages()
                if not progress:
                    return done
                done += progress
        finally:
            self._dispatching = False

    def _drain_signals(self) -> int:
        delivery = self.hub.delivery
        count = 0
        for name in delivery.pending_names():
            delivery.flush(name)
        for name in delivery.sockets:
            if not self._members(name):
                continue
            receiver = self._channel_recv(name)
            while True:
                try:
                    data = receiver.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                for num in data:
                    proc = self._next_member(name)
                    with self.process(proc):
                        proc.run_handler(num)
                    count += 1
        return count

    def _channel_recv(self, name: str) -> Any:
        ch = self.channels
        if name == "any worker":
            return ch.any_worker.recv
        if name == "any mule":
            return ch.any_mule.recv
        if name.startswith("farm "):
            return ch.farm_signals[name[5:]].recv
        kind, _, ident = name.partition(" ")
        return (ch.worker_signals if kind == "worker" else ch.mule_signals)[int(ident)].recv

    def _drain_messages(self) -> int:
        count = 0
        specs = {m.id: m for m in self.config.mules}
        for queue in self.channels.queues():
            if queue.name == "shared":
                members = [
                    p
                    for p in self.processes.values()
                    if p.role == "mule" and specs[p.id].program is None
                ]
            elif queue.name.startswith("farm "):
                members = [p for p in self._members(queue.name) if specs[p.id].program is None]
            else:
                ident = int(queue.name.split()[1])
                members = [self.processes[queue.name]] if specs[ident].program is None else []
            if not members:
                continue
            while True:
                try:
                    message = queue.recv.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                proc = self._rotate(queue.name, members)
                sb = self.scoreboard
                sb.ints[sb.received_base + proc.slot * sb.nqueues + queue.index] += 1
                with self.process(proc):
                    mule._deliver_message(proc, message)
                count += 1
        return count

    # -- time --------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass: timers and rb-timers fire at their due times, crons at each
        minute boundary they match, in time order, each delivered before the next."""
        clock = self.clock
        end_mono = clock.mono + seconds
        while True:
            next_timer = self.hub.next_deadline()
            minute = (int(clock.wall) // 60 + 1) * 60  # next minute boundary (wall)
            next_minute = clock.mono + (minute - clock.wall)
            candidates = [t for t in (next_timer, next_minute) if t is not None and t <= end_mono]
            if not candidates:
                break
            step = min(candidates)
            clock.wall += step - clock.mono
            clock.mono = step
            if step == next_minute:
                self._check_crons()
            for num in self.hub.triggers.due_timers(clock.mono):
                self.hub.raise_signal(num, "timer")
            self.dispatch()
        clock.wall += end_mono - clock.mono
        clock.mono = end_mono
        self.dispatch()

    def set(self, when: datetime.datetime) -> None:
        """Jump the wall clock to `when` (local time) and check the crons once there."""
        self.clock.wall = when.timestamp()
        self._check_crons()
        self.dispatch()

    def _check_crons(self) -> None:
        wall = self.clock.wall
        for cron in self.hub.triggers.due_crons(wall, time.localtime(wall)):
            if cron.signum is not None:
                self.hub.raise_signal(cron.signum, "cron")

    def touch(self, path: str) -> None:
        """A change of `path`: fire the file monitors on it (or on its directory)."""
        target = os.path.abspath(path)
        parent = os.path.dirname(target)
        for monitor in self.hub.file_monitors:
            if monitor.path in (target, parent):
                monitor.fired += 1
                self.hub.raise_signal(monitor.signum, "filemon")
        self.dispatch()

    # -- conveniences --------------------------------------------------------------------------

    def handled_by(self, num: int) -> list[str]:
        return [h.process for h in self.handled if h.num == num]

    def pending_messages(self, ident: int) -> int:
        queue = self.channels.mule_queues[ident]
        return self.scoreboard.depth(queue.index)

    def requests(self, ident: int) -> int:
        return self.scoreboard.get(self.scoreboard.worker_slot(ident), I.REQUESTS)


def install(
    workers: int = 1,
    mules: int = 0,
    farms: dict[str, tuple[int, ...]] | None = None,
    options: Sequence[str] = (),
    start: datetime.datetime | None = None,
) -> Harness:
    """Build a harness and install its ``uwsgi`` module (see the module docstring)."""
    return Harness(workers, mules, farms or {}, options, start).install()


__all__ = ["FakeClock", "Handled", "Harness", "Raised", "install"]
