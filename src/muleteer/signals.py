"""The uWSGI signal framework in the master: target grammar, signal table, router, delivery.

A signal is a number 0-255. The master is the only router: ``uwsgi.signal(n)`` from any
process, timers, crons and file monitors all end here, and the router writes one byte
per destination into signal channels (see ``ipc``). Delivery never blocks the master and
never drops silently: a byte that does not fit in a channel is *held* and written when
the channel drains; only past a bound per channel is it dropped, counted and logged.
"""

from __future__ import annotations

import enum
import errno
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MASTER = "master"
DEFAULT_MAX_HELD = 10_000
_BYTE = [bytes((i,)) for i in range(256)]  # one preallocated 1-byte message per signal


class Kind(enum.Enum):
    ANY_WORKER = "any worker"
    WORKERS = "workers"
    ACTIVE_WORKERS = "active-workers"
    WORKER = "worker"
    ANY_MULE = "any mule"
    MULES = "mules"
    MULE = "mule"
    FARM = "farm"
    SPOOLER = "spooler"
    SUBSCRIBED = "subscribed"
    INVALID = "invalid"


@dataclass(frozen=True)
class Target:
    kind: Kind
    text: str
    index: int = 0
    farm: str = ""


def _suffix_number(text: str, prefix: str) -> int | None:
    rest = text[len(prefix) :]
    return int(rest) if rest.isdigit() else None


def parse_target(text: str, farms: Sequence[str]) -> Target:
    """uWSGI's target strings, checked in uWSGI's order; bare farm names are accepted too."""
    if text in ("", "worker", "worker0"):
        return Target(Kind.ANY_WORKER, text)
    if text == "workers":
        return Target(Kind.WORKERS, text)
    if text == "active-workers":
        return Target(Kind.ACTIVE_WORKERS, text)
    if text.startswith("worker"):
        number = _suffix_number(text, "worker")
        return Target(Kind.WORKER, text, number) if number else Target(Kind.INVALID, text)
    if text == "subscribed":
        return Target(Kind.SUBSCRIBED, text)
    if text == "spooler":
        return Target(Kind.SPOOLER, text)
    if text == "mules":
        return Target(Kind.MULES, text)
    if text in ("mule", "mule0"):
        return Target(Kind.ANY_MULE, text)
    if text.startswith("mule"):
        number = _suffix_number(text, "mule")
        return Target(Kind.MULE, text, number) if number else Target(Kind.INVALID, text)
    if text.startswith("farm_"):
        return Target(Kind.FARM, text, farm=text[5:])
    if text.startswith("farm") and text[4:].isdigit():
        index = int(text[4:])
        if 1 <= index <= len(farms):
            return Target(Kind.FARM, text, farm=farms[index - 1])
        return Target(Kind.INVALID, text)
    if text in farms:
        return Target(Kind.FARM, text, farm=text)
    return Target(Kind.INVALID, text)


def target_problem(target: Target, workers: int, mules: int, farms: Sequence[str]) -> str | None:
    """Why `target` cannot be delivered with this topology, or None."""
    if target.kind is Kind.INVALID:
        return f"invalid signal target {target.text!r}"
    if target.kind is Kind.WORKER and target.index > workers:
        return f"invalid signal target {target.text!r}: {workers} worker(s) configured"
    if target.kind in (Kind.ANY_MULE, Kind.MULES) and mules == 0:
        return f"signal target {target.text!r}: no mule configured"
    if target.kind is Kind.MULE and target.index > mules:
        return f"invalid signal target {target.text!r}: {mules} mule(s) configured"
    if target.kind is Kind.FARM and target.farm not in farms:
        return f"unknown farm: {target.farm}"
    if target.kind is Kind.SPOOLER:
        return "could not deliver signal to the spooler: muleteer has no spooler"
    return None


@dataclass
class SignalEntry:
    num: int
    target: Target
    registrants: set[str] = field(default_factory=set)  # "master", "worker 3", "mule 2"
    raised: int = 0
    delivered: int = 0
    dropped: int = 0


@dataclass
class _Rotor:
    position: int = 0

    def pick(self, items: Sequence[str]) -> str:
        self.position = (self.position + 1) % len(items)
        return items[self.position]


class SignalTable:
    """num -> target and who registered a handler. The master's copy is authoritative."""

    def __init__(self, workers: int, mules: int, farms: Sequence[str]) -> None:
        self.workers = workers
        self.mules = mules
        self.farms = list(farms)
        self.entries: dict[int, SignalEntry] = {}
        self.unregistered_raised: dict[int, int] = {}
        self._rotors: dict[int, _Rotor] = {}
        self._static: dict[int, list[str]] = {}  # routes that never change between raises

    def register(self, num: int, target_text: str, registrant: str) -> SignalEntry:
        """Record a registration. A process registering again (respawn, lazy-apps) only
        adds itself to the registrants."""
        target = parse_target(target_text, self.farms)
        entry = self.entries.get(num)
        if entry is None or entry.target != target:
            previous = entry.registrants if entry is not None else set()
            entry = SignalEntry(num, target, previous if entry is None else set())
            self.entries[num] = entry
        entry.registrants.add(registrant)
        self._static.pop(num, None)
        problem = target_problem(target, self.workers, self.mules, self.farms)
        if problem:
            log.warning("signal %d registered by %s: %s", num, registrant, problem)
        return entry

    def is_registered(self, num: int) -> bool:
        return num in self.entries

    def _restricted(self, entry: SignalEntry, kind: str) -> list[str]:
        """Registrants of `kind` when the handler exists only where it was registered
        after fork (deviation 4/6 of DESIGN.md): a target like ``mule`` then means "a mule
        that has the handler"."""
        if MASTER in entry.registrants:
            return []
        return sorted(r for r in entry.registrants if r.startswith(kind + " "))

    def route(self, num: int, active_workers: Callable[[], Iterable[int]]) -> list[str]:
        """Channel names ("worker 1", "any worker", "mule 2", "any mule", "farm x") that
        must receive one byte each; [] when nothing can (the caller counts a drop)."""
        entry = self.entries.get(num)
        if entry is None:
            self.unregistered_raised[num] = self.unregistered_raised.get(num, 0) + 1
            return ["any worker"] if self.workers else []
        entry.raised += 1
        static = self._static.get(num)
        if static is not None:
            return static
        names = self._route(entry, active_workers)
        kind = entry.target.kind
        rotating = (
            kind in (Kind.ANY_WORKER, Kind.ANY_MULE)
            and len(names) == 1
            and (not names[0].startswith("any "))
        )
        if kind is not Kind.ACTIVE_WORKERS and not rotating:
            self._static[num] = names
        return names

    def _route(self, entry: SignalEntry, active_workers: Callable[[], Iterable[int]]) -> list[str]:
        num = entry.num
        target = entry.target
        kind = target.kind
        if target_problem(target, self.workers, self.mules, self.farms):
            return []
        if kind in (Kind.ANY_WORKER, Kind.WORKERS, Kind.ACTIVE_WORKERS):
            mine = self._restricted(entry, "worker")
            if kind is Kind.ANY_WORKER:
                if mine and len(mine) < self.workers:
                    return [self._rotors.setdefault(num, _Rotor()).pick(mine)]
                return ["any worker"]
            if kind is Kind.WORKERS:
                return mine or [f"worker {i}" for i in range(1, self.workers + 1)]
            return [f"worker {i}" for i in active_workers()]
        if kind is Kind.WORKER:
            return [f"worker {target.index}"]
        if kind in (Kind.ANY_MULE, Kind.MULES):
            mine = self._restricted(entry, "mule")
            if kind is Kind.ANY_MULE:
                if mine:
                    return [self._rotors.setdefault(num, _Rotor()).pick(mine)]
                return ["any mule"]
            return mine or [f"mule {i}" for i in range(1, self.mules + 1)]
        if kind is Kind.MULE:
            return [f"mule {target.index}"]
        if kind is Kind.FARM:
            return [f"farm {target.farm}"]
        return []  # subscribed: silently ignored by uWSGI as well


class Delivery:
    """Writes signal bytes into channels without ever blocking; holds what does not fit."""

    def __init__(
        self,
        sockets: dict[str, socket.socket],
        max_held: int = DEFAULT_MAX_HELD,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        self.sockets = sockets
        self.max_held = max_held
        self.held: dict[str, deque[int]] = {name: deque() for name in sockets}
        self.delivered: dict[str, int] = dict.fromkeys(sockets, 0)
        self.dropped: dict[str, int] = dict.fromkeys(sockets, 0)
        self.delivered_by_num: dict[int, int] = {}
        self.dropped_by_num: dict[int, int] = {}
        self._on_drop = on_drop
        self.pending: set[str] = set()  # channels holding bytes
        self.transitions = 0  # bumped whenever `pending` changes (the loop re-registers)

    def held_count(self, name: str) -> int:
        return len(self.held[name])

    def held_by_num(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for queue in self.held.values():
            for num in queue:
                counts[num] = counts.get(num, 0) + 1
        return counts

    def send(self, name: str, num: int) -> None:
        queue = self.held[name]
        if not queue:
            # The usual case: nothing held, one send() and done.
            try:
                sent = self.sockets[name].send(_BYTE[num])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    raise
                sent = 0
            if sent:
                self.delivered[name] += 1
                self.delivered_by_num[num] = self.delivered_by_num.get(num, 0) + 1
                return
            queue.append(num)
            self.pending.add(name)
            self.transitions += 1
            return
        if len(queue) >= self.max_held:
            self.dropped[name] += 1
            self.dropped_by_num[num] = self.dropped_by_num.get(num, 0) + 1
            if self._on_drop is not None:
                self._on_drop(name, num)
            return
        queue.append(num)

    def drop(self, name: str, num: int) -> None:
        """Count a signal that had no destination at all."""
        self.dropped_by_num[num] = self.dropped_by_num.get(num, 0) + 1
        if self._on_drop is not None:
            self._on_drop(name, num)

    def flush(self, name: str) -> bool:
        """Write as much of the held bytes as the channel takes; True when nothing is left."""
        queue = self.held[name]
        sock = self.sockets[name]
        while queue:
            # One send() of many bytes costs one socket buffer slot; one byte per send
            # would fill the kernel's accounting after a few hundred signals.
            chunk = bytes(list(queue)[:4096]) if len(queue) > 1 else bytes((queue[0],))
            try:
                sent = sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                    return False
                raise
            for _ in range(sent):
                num = queue.popleft()
                self.delivered_by_num[num] = self.delivered_by_num.get(num, 0) + 1
            self.delivered[name] += sent
        if name in self.pending:
            self.pending.discard(name)
            self.transitions += 1
        return True

    def pending_names(self) -> list[str]:
        return sorted(self.pending)
