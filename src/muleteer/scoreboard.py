"""The scoreboard: per-slot status and counters in shared memory made before any fork.

One anonymous shared mapping holds an int64 table and a float64 table. Each slot (worker
or mule) has one writer for each field: the master writes ``pid``, ``respawns`` and
``last_spawn`` when it forks the slot; the child writes everything else about itself.
Readers (the master's harakiri check, the stats) may see a field a moment old but never
a torn one: aligned 8-byte stores are atomic on every platform CPython runs on.

Per-queue rejection counters have many writers (every process that sends), so they are
only touched under a lock; they change on the slow path only (a full queue).
"""

from __future__ import annotations

import enum
import mmap
from typing import Any

from muleteer.locks import make_locks


class I(enum.IntEnum):  # noqa: E742 - short index names keep hot-path code readable
    PID = 0
    STATUS = 1
    SIGNUM = 2  # signal being handled while STATUS == SIGNAL
    REQUESTS = 3  # since the slot was first spawned
    DELTA_REQUESTS = 4  # since the current process was spawned
    EXCEPTIONS = 5
    HARAKIRI_COUNT = 6
    SIGNALS = 7  # handlers run
    TX = 8  # response bytes sent
    RUNNING_TIME = 9  # microseconds spent in requests
    AVG_RT = 10  # microseconds, moving average
    RESPAWNS = 11
    RSS = 12
    VSZ = 13
    MSGS_UNHANDLED = 15  # messages a signal-only mule had no hook for
    SIGNALS_RAISED = 17
    ACCEPTING = 18
    BOOTED = 19  # 1 once a worker serves (set by the worker; reset by the master at spawn)
    COUNT = 20


class F(enum.IntEnum):
    HARAKIRI = 0  # monotonic deadline of the current request / handler (0 = none)
    USER_HARAKIRI = 1  # uwsgi.set_user_harakiri() deadline
    LAST_SPAWN = 2  # wall clock
    REQUEST_START = 3  # wall clock, 0 when idle
    HARAKIRI_SIGNAL = 4  # signal whose handler armed HARAKIRI (mules)
    RECYCLE_DUE = 5  # wall clock when the worker's max-requests recycle fell due (0 = not)
    COUNT = 6


class Status(enum.IntEnum):
    IDLE = 0
    BUSY = 1
    SIGNAL = 2  # running a signal handler ("sig<N>" in the stats)
    STOPPING = 3
    DEAD = 4


class Scoreboard:
    """Slots 1..workers are workers, workers+1..workers+mules are mules (0 = master).

    Message queues have three counters each. ``sent`` and ``received`` are matrices with
    one row per slot, so every process writes only its own row (no lock on the hot
    path); a queue's totals are the sums of its column. ``rejected`` is shared by every
    sender and only changes on the slow path (a full queue), under a lock.
    """

    def __init__(self, workers: int, mules: int, queues: list[str]) -> None:
        self.workers = workers
        self.mules = mules
        self.slots = 1 + workers + mules
        self.queues = list(queues)
        self.nqueues = nq = len(self.queues)
        self.sent_base = self.slots * I.COUNT
        self.received_base = self.sent_base + self.slots * nq
        self.rejected_base = self.received_base + self.slots * nq
        ints = self.rejected_base + nq
        floats = self.slots * F.COUNT
        self._map = mmap.mmap(-1, (ints + floats) * 8)
        view = memoryview(self._map)
        self.ints: Any = view[: ints * 8].cast("q")
        self.floats: Any = view[ints * 8 :].cast("d")
        # A process-shared lock inherited through fork; only the slow paths take it.
        (self._lock,) = make_locks(1)

    def worker_slot(self, worker_id: int) -> int:
        return worker_id

    def mule_slot(self, mule_id: int) -> int:
        return self.workers + mule_id

    def get(self, slot: int, field: I) -> int:
        return int(self.ints[slot * I.COUNT + field])

    def set(self, slot: int, field: I, value: int) -> None:
        self.ints[slot * I.COUNT + field] = value

    def getf(self, slot: int, field: F) -> float:
        return float(self.floats[slot * F.COUNT + field])

    def setf(self, slot: int, field: F, value: float) -> None:
        self.floats[slot * F.COUNT + field] = value

    def queue_index(self, name: str) -> int:
        return self.queues.index(name)

    def count_rejected(self, queue: int) -> None:
        with self._lock:
            self.ints[self.rejected_base + queue] += 1

    def rejected(self, queue: int) -> int:
        return int(self.ints[self.rejected_base + queue])

    def sent(self, queue: int) -> int:
        return sum(self.ints[self.sent_base + s * self.nqueues + queue] for s in range(self.slots))

    def received(self, queue: int) -> int:
        base = self.received_base
        return sum(self.ints[base + s * self.nqueues + queue] for s in range(self.slots))

    def depth(self, queue: int) -> int:
        """Messages waiting in a queue (sent minus received; never negative)."""
        return max(0, self.sent(queue) - self.received(queue))

    def slot_total(self, base: int, slot: int) -> int:
        """Sum of one row of the sent or received matrix."""
        start = base + slot * self.nqueues
        return sum(self.ints[start : start + self.nqueues])
