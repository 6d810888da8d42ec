"""Worker and mule slots: stable ids, explicit states and the respawn back-off. No I/O.

A slot is "worker 3" or "mule 2" for the life of the master; processes come and go in it
(the pid is just a field). A process that dies soon after it started is respawned after
an exponentially growing delay (0.1 s, 0.2 s, ... up to a cap), kept as a deadline the
master loop waits for; the master itself never sleeps. One that lived long enough is
respawned at once and resets the back-off.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MIN_LIFETIME = 1.0  # seconds a process must live for its death not to count as a failure
FIRST_DELAY = 0.1


class SlotState(enum.Enum):
    EMPTY = "empty"  # no process; spawn when due (respawn_at)
    RUNNING = "running"
    STOPPING = "stopping"  # asked to stop (cursed); killed when the mercy deadline passes
    RETIRED = "retired"  # stopped for good (shutdown or reload in progress)


_ALLOWED = {
    SlotState.EMPTY: {SlotState.RUNNING, SlotState.RETIRED},
    SlotState.RUNNING: {SlotState.STOPPING, SlotState.EMPTY, SlotState.RETIRED},
    SlotState.STOPPING: {SlotState.EMPTY, SlotState.RETIRED, SlotState.STOPPING},
    SlotState.RETIRED: {SlotState.EMPTY},
}


class TransitionError(RuntimeError):
    pass


@dataclass
class Slot:
    kind: str  # "worker" or "mule"
    id: int
    state: SlotState = SlotState.EMPTY
    pid: int = 0
    spawned_at: float = 0.0  # monotonic
    respawn_at: float = 0.0  # monotonic; when an EMPTY slot may be spawned
    failures: int = 0  # consecutive deaths shortly after start
    respawns: int = 0
    mercy_deadline: float = 0.0  # monotonic; STOPPING -> SIGKILL after it
    stop_reason: str = ""
    respawn_after_stop: bool = True

    @property
    def name(self) -> str:
        return f"{self.kind} {self.id}"

    def _move(self, new: SlotState) -> None:
        if new not in _ALLOWED[self.state]:
            raise TransitionError(f"{self.name}: {self.state.value} -> {new.value}")
        self.state = new

    def spawned(self, pid: int, now: float) -> None:
        self._move(SlotState.RUNNING)
        self.pid = pid
        self.spawned_at = now
        self.stop_reason = ""
        self.respawn_after_stop = True

    def stop(self, now: float, mercy: float, reason: str, respawn: bool) -> None:
        """Ask the process to stop; it gets `mercy` seconds before SIGKILL."""
        if self.state is SlotState.EMPTY and not respawn:
            self._move(SlotState.RETIRED)
            return
        if self.state is not SlotState.RUNNING and self.state is not SlotState.STOPPING:
            return
        self._move(SlotState.STOPPING)
        self.mercy_deadline = now + mercy
        self.stop_reason = reason
        self.respawn_after_stop = respawn

    def exited(self, now: float, cap: float, healthy: bool = False) -> float:
        """The process is gone. Returns the delay before the slot may be spawned again
        (``inf`` when it must stay retired). `healthy`: it retired itself on purpose
        (max-requests, ...) or had started serving before it died - neither is a failure
        to start, so neither is backed off."""
        stopping = self.state is SlotState.STOPPING or healthy
        self.pid = 0
        if stopping and not self.respawn_after_stop:
            self._move(SlotState.RETIRED)
            return float("inf")
        lived = now - self.spawned_at
        if stopping or lived >= MIN_LIFETIME:
            # A requested stop (reload, max-requests, ...) or a long life: no penalty.
            self.failures = 0
            delay = 0.0
        else:
            self.failures += 1
            delay = min(cap, FIRST_DELAY * 2 ** (self.failures - 1))
        self._move(SlotState.EMPTY)
        self.respawn_at = now + delay
        self.respawns += 1
        return delay

    def retire(self) -> None:
        """Keep an EMPTY slot empty (shutdown or reload in progress)."""
        if self.state is SlotState.EMPTY:
            self._move(SlotState.RETIRED)

    def reopen(self, now: float) -> None:
        if self.state is SlotState.RETIRED:
            self._move(SlotState.EMPTY)
            self.respawn_at = now

    def due(self, now: float) -> bool:
        return self.state is SlotState.EMPTY and now >= self.respawn_at
