"""Time-based triggers of the master: timers, rb-timers, uWSGI crons and touch files.

Everything here is pure: no method reads a clock by itself. Timers take ``now`` in
monotonic seconds; crons take the wall-clock epoch and the matching local
``time.struct_time``; touch watches stat their file when asked. The master loop sleeps
until :meth:`TriggerSet.next_deadline` (and at least once a second, for crons and
touches), then asks what is due and routes the signals.

Behaviour follows uWSGI 2.0 (research/uwsgi-behaviour.md sections 4.8-4.11), with
these deliberate differences, each of which turns a silent failure into a clear one:

* no cap on the number of timers, rb-timers or crons (uWSGI stops at 64 of each);
* a timer or rb-timer interval that is not > 0 raises :class:`TriggerError` (uWSGI
  never fires it, or spins its master);
* cron fields out of range, and malformed option values, raise :class:`TriggerError`
  (uWSGI reads them with ``atoi`` and carries on);
* a wall clock stepped back by a minute or more lets a cron fire again (uWSGI waits
  until the clock has caught up with the last firing).

File monitors (inotify or stat polling) live in :mod:`muleteer.filemon` and are
re-exported here.
"""

from __future__ import annotations

import calendar
import datetime
import heapq
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass

from muleteer.filemon import (
    FileMonitorBackend,
    InotifyBackend,
    StatPollBackend,
    make_file_monitor_backend,
)

__all__ = [
    "Cron",
    "FileMonitorBackend",
    "InotifyBackend",
    "RbTimer",
    "StatPollBackend",
    "Timer",
    "TouchWatch",
    "TriggerError",
    "TriggerSet",
    "check_signum",
    "make_file_monitor_backend",
    "parse_cron2_option",
    "parse_cron_option",
    "parse_timer_option",
    "parse_touch_signal_option",
]

logger = logging.getLogger(__name__)

#: A cron fires at most once per this many seconds of wall time.
CRON_MIN_GAP = 60.0

# Calendar of days-of-week and dates repeats every 28 years between century years, so a
# combination that never shows up in that window (Feb 30, ...) never shows up at all.
_NEXT_FIRE_HORIZON_YEARS = 28


class TriggerError(ValueError):
    """Bad trigger arguments or option syntax; the message names the problem."""


def check_signum(signum: object) -> int:
    """Return ``signum`` if it is an int in 0-255, else raise :class:`TriggerError`."""
    if not isinstance(signum, int) or isinstance(signum, bool):
        raise TriggerError(f"signal number must be an int, got {signum!r}")
    if not 0 <= signum <= 255:
        raise TriggerError(f"signal number {signum} out of range (0-255)")
    return signum


def _check_interval(interval: object, what: str) -> float:
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise TriggerError(f"{what} interval must be a number of seconds, got {interval!r}")
    value = float(interval)
    if not math.isfinite(value) or value <= 0:
        raise TriggerError(f"{what} interval must be > 0 seconds, got {interval!r}")
    return value


# --------------------------------------------------------------------------- timers


@dataclass
class Timer:
    """A periodic signal (``uwsgi.add_timer``/``add_ms_timer``, ``--timer``).

    Expiries sit on a fixed grid ``start + k * interval`` (k >= 1), like a kernel
    periodic timer, so lateness of the master never accumulates into drift. Expiries
    missed while the master was busy are coalesced into one firing and counted in
    ``overruns``.
    """

    signum: int
    interval: float
    next_due: float
    fired: int = 0
    overruns: int = 0
    #: phase origin of the grid; defaults to ``next_due - interval``
    start: float = math.nan

    def __post_init__(self) -> None:
        check_signum(self.signum)
        self.interval = _check_interval(self.interval, "timer")
        if math.isnan(self.start):
            self.start = self.next_due - self.interval

    def expire(self, now: float) -> None:
        """Record one firing at ``now`` (>= ``next_due``) and move to the next grid point."""
        old_k = round((self.next_due - self.start) / self.interval)
        k = max(old_k + 1, math.floor((now - self.start) / self.interval) + 1)
        # The division can round either way: settle on the first grid point after `now`.
        while self.start + k * self.interval <= now:
            k += 1
        while k - 1 > old_k and self.start + (k - 1) * self.interval > now:
            k -= 1
        self.overruns += k - old_k - 1
        self.fired += 1
        self.next_due = self.start + k * self.interval


@dataclass
class RbTimer:
    """A userspace timer (``uwsgi.add_rb_timer``, ``--rbtimer``).

    Re-armed at firing time + interval, so lateness accumulates (as in uWSGI). With
    ``iterations`` > 0 it stops after that many firings and stays listed, ``finished``.
    """

    signum: int
    interval: float
    iterations: int
    next_due: float
    fired: int = 0

    def __post_init__(self) -> None:
        check_signum(self.signum)
        self.interval = _check_interval(self.interval, "rb_timer")
        its = self.iterations
        if not isinstance(its, int) or isinstance(its, bool) or its < 0:
            raise TriggerError(
                f"rb_timer iterations must be an int >= 0 (0 = forever), got {its!r}"
            )

    @property
    def finished(self) -> bool:
        """True once the timer has fired ``iterations`` times (never when 0)."""
        return self.iterations > 0 and self.fired >= self.iterations

    def expire(self, now: float) -> None:
        """Record one firing at ``now``; re-arm unless finished (``next_due`` then stays)."""
        self.fired += 1
        if not self.finished:
            self.next_due = now + self.interval


# --------------------------------------------------------------------------- crons

# (name, low, high) of the five fields; weekday 7 is another spelling of Sunday.
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 7),
)


def _field_matches(spec: int, value: int) -> bool:
    """uWSGI field rule: a value >= 0 must be equal; ``-N`` means divisible by N."""
    if spec >= 0:
        return value == spec
    return value % -spec == 0


@dataclass
class Cron:
    """A signal cron (``uwsgi.add_cron``) or a command cron (``--cron``, ``--cron2``...).

    ``harakiri`` (command crons): > 0 is the cron's own time limit in seconds, 0 means
    "use ``--cron-harakiri``", -1 means no limit (``cron2 harakiri=0``). ``pid`` and
    ``started_at`` belong to the caller, which sets them while a command runs: a
    ``unique`` cron with a ``pid`` is skipped, as uWSGI skips a unique cron still running.
    """

    signum: int | None
    minute: int
    hour: int
    day: int
    month: int
    weekday: int
    command: str | None = None
    unique: bool = False
    harakiri: int = 0
    last_fired: float | None = None
    pid: int | None = None
    started_at: float | None = None

    def __post_init__(self) -> None:
        if self.signum is None:
            if not self.command:
                raise TriggerError("a cron needs a signal number or a command")
        else:
            check_signum(self.signum)
            if self.command is not None:
                raise TriggerError("a cron has either a signal number or a command, not both")
        for name, low, high in _CRON_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TriggerError(f"cron {name} must be an int, got {value!r}")
            if value >= 0 and not low <= value <= high:
                raise TriggerError(f"cron {name} {value} out of range ({low}-{high}, or negative)")

    def _day_ok(self, mday: int, month: int, sunday0_wday: int) -> bool:
        if not _field_matches(self.month, month):
            return False
        day_ok = _field_matches(self.day, mday)
        week_ok = _field_matches(0 if self.weekday == 7 else self.weekday, sunday0_wday)
        if self.day >= 0 and self.weekday >= 0:
            return day_ok or week_ok  # the crontab rule: day-of-month OR day-of-week
        return day_ok and week_ok

    def matches(self, t: time.struct_time) -> bool:
        """Whether the minute of local time ``t`` matches this cron."""
        # struct_time counts weekdays from Monday = 0; uWSGI (like crontab) from Sunday = 0.
        return (
            _field_matches(self.minute, t.tm_min)
            and _field_matches(self.hour, t.tm_hour)
            and self._day_ok(t.tm_mday, t.tm_mon, (t.tm_wday + 1) % 7)
        )

    def next_fire(self, after: datetime.datetime) -> datetime.datetime | None:
        """First matching minute strictly after ``after`` (same tzinfo), or None if never.

        Plain calendar arithmetic on local time: a minute skipped by a DST jump may be
        returned although the master will never see it.
        """
        minutes = [m for m in range(60) if _field_matches(self.minute, m)]
        hours = [h for h in range(24) if _field_matches(self.hour, h)]
        if not minutes or not hours:
            return None
        first = after.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
        year, month = first.year, first.month
        for _ in range(12 * _NEXT_FIRE_HORIZON_YEARS + 1):
            if _field_matches(self.month, month):
                start_day = first.day if (year, month) == (first.year, first.month) else 1
                for mday in range(start_day, calendar.monthrange(year, month)[1] + 1):
                    date = datetime.date(year, month, mday)
                    if not self._day_ok(mday, month, (date.weekday() + 1) % 7):
                        continue
                    on_first_day = date == first.date()
                    for hour in hours:
                        if on_first_day and hour < first.hour:
                            continue
                        for minute in minutes:
                            if on_first_day and hour == first.hour and minute < first.minute:
                                continue
                            return datetime.datetime.combine(
                                date, datetime.time(hour, minute), tzinfo=after.tzinfo
                            )
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return None


# --------------------------------------------------------------------------- touch files


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


@dataclass
class TouchWatch:
    """A polled file (``--touch-reload``, ``--touch-signal``, ``--touch-mules-reload``...).

    ``action`` is an opaque tag for the caller; ``last_mtime`` is None while the file
    does not exist. :meth:`create` records the current mtime.
    """

    path: str
    action: str
    signum: int | None
    last_mtime: float | None

    def __post_init__(self) -> None:
        if self.signum is not None:
            check_signum(self.signum)

    @classmethod
    def create(cls, path: str, action: str, signum: int | None = None) -> TouchWatch:
        """A watch whose baseline is the file's mtime now (None if it is missing)."""
        mtime = _mtime(path)
        if mtime is None:
            logger.warning(
                "unable to stat %s, %s will be triggered as soon as the file is created",
                path,
                action,
            )
        return cls(path, action, signum, mtime)

    def check(self) -> bool:
        """Stat now; True when the mtime changed (created and deleted count) since last time."""
        mtime = _mtime(self.path)
        changed = mtime != self.last_mtime
        self.last_mtime = mtime
        return changed


# --------------------------------------------------------------------------- the set


class TriggerSet:
    """All time-based triggers of the master. No cap on their number (uWSGI caps at 64).

    ``timers``, ``rb_timers``, ``crons`` and ``touches`` are plain lists for the stats
    server to read; add to them only through the ``add_*`` methods, which also keep the
    deadline heap.
    """

    def __init__(self) -> None:
        self.timers: list[Timer] = []
        self.rb_timers: list[RbTimer] = []
        self.crons: list[Cron] = []
        self.touches: list[TouchWatch] = []
        # (due, registration order, timer): ties fire in registration order
        self._heap: list[tuple[float, int, Timer | RbTimer]] = []
        self._order = itertools.count()

    def add_timer(self, signum: int, interval: float, now: float) -> Timer:
        """A timer whose first expiry is at ``now + interval``."""
        interval = _check_interval(interval, "timer")
        timer = Timer(signum, interval, now + interval, start=now)
        self.timers.append(timer)
        heapq.heappush(self._heap, (timer.next_due, next(self._order), timer))
        return timer

    def add_rb_timer(self, signum: int, interval: float, iterations: int, now: float) -> RbTimer:
        """An rb-timer first due at ``now + interval``; ``iterations`` 0 = forever."""
        interval = _check_interval(interval, "rb_timer")
        timer = RbTimer(signum, interval, iterations, now + interval)
        self.rb_timers.append(timer)
        heapq.heappush(self._heap, (timer.next_due, next(self._order), timer))
        return timer

    def add_cron(self, cron: Cron) -> Cron:
        self.crons.append(cron)
        return cron

    def add_touch(self, watch: TouchWatch) -> TouchWatch:
        self.touches.append(watch)
        return watch

    def next_deadline(self, now: float) -> float | None:
        """Monotonic time of the earliest timer or rb-timer expiry (may be <= ``now``).

        None when there is none; the caller still wakes at least once a second for
        crons and touches.
        """
        return self._heap[0][0] if self._heap else None

    def due_timers(self, now: float) -> list[int]:
        """Fire and re-arm every timer and rb-timer due at ``now``; their signums by due time.

        Each timer fires at most once per call: a timer late by several periods fires
        once, an rb-timer re-arms from ``now``.
        """
        signums: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, order, timer = heapq.heappop(heap)
            if due != timer.next_due:  # changed behind our back: file it where it now is
                heapq.heappush(heap, (timer.next_due, order, timer))
                continue
            timer.expire(now)
            signums.append(timer.signum)
            if not (isinstance(timer, RbTimer) and timer.finished):
                heapq.heappush(heap, (timer.next_due, order, timer))
        return signums

    def due_crons(self, wall_now: float, local: time.struct_time) -> list[Cron]:
        """Crons that fire now (``local`` is ``time.localtime(wall_now)``); sets last_fired."""
        fired: list[Cron] = []
        for cron in self.crons:
            if cron.unique and cron.pid is not None:
                continue  # previous run still alive: skipped, last_fired untouched
            if not cron.matches(local):
                continue
            if cron.last_fired is not None and abs(wall_now - cron.last_fired) < CRON_MIN_GAP:
                continue
            cron.last_fired = wall_now
            fired.append(cron)
        return fired

    def changed_touches(self) -> list[TouchWatch]:
        """Stat every touch file; those whose mtime changed since the last call."""
        return [watch for watch in self.touches if watch.check()]


# --------------------------------------------------------------------------- option values


def _parse_int(text: str) -> int | None:
    try:
        return int(text, 10)
    except ValueError:
        return None


def parse_timer_option(value: str, *, rb: bool = False) -> tuple[int, float]:
    """``--timer "17 5"`` (or ``--rbtimer`` with ``rb=True``) -> (signum, seconds)."""
    kind = "redblack signal timer" if rb else "signal timer"
    syntax = f"invalid {kind} syntax, must be: <signal> <seconds>"
    parts = value.split()
    signum = _parse_int(parts[0]) if len(parts) == 2 else None
    try:
        seconds: float | None = float(parts[1]) if signum is not None else None
    except ValueError:
        seconds = None
    if signum is None or seconds is None:
        raise TriggerError(syntax)
    return check_signum(signum), _check_interval(seconds, "rb_timer" if rb else "timer")


def parse_cron_option(value: str, *, unique: bool = False) -> Cron:
    """``--cron "MIN HOUR DAY MONTH WEEK COMMAND..."`` (``--unique-cron`` with ``unique``)."""
    parts = value.split(None, 5)
    if len(parts) < 6:
        raise TriggerError(f"invalid cron syntax: {value!r}")
    numbers = [_parse_int(part) for part in parts[:5]]
    if any(n is None for n in numbers):
        raise TriggerError(f"invalid cron syntax: {value!r}")
    minute, hour, day, month, weekday = (n for n in numbers if n is not None)
    return Cron(None, minute, hour, day, month, weekday, command=parts[5].strip(), unique=unique)


_CRON2_KEYS = ("minute", "hour", "day", "month", "week", "unique", "harakiri")


def parse_cron2_option(value: str) -> Cron:
    """``--cron2 "minute=0,hour=3,unique=1,harakiri=10 COMMAND"``.

    As in uWSGI, a value whose first word holds no ``=`` is all command (every field
    -1); missing keys default to -1 (fields) or 0; ``harakiri=0`` opts out of
    ``--cron-harakiri`` (stored as -1). Unknown keys are refused.
    """
    value = value.strip()
    head, command = [*value.split(None, 1), "", ""][:2]
    if "=" not in head:
        return Cron(None, -1, -1, -1, -1, -1, command=value)
    command = command.strip()
    if not command:
        raise TriggerError(f"unable to parse cron definition: {value}")
    settings: dict[str, int] = {}
    for item in head.split(","):
        if not item:
            continue
        key, sep, text = item.partition("=")
        if key == "legion":
            raise TriggerError("legion crons are not supported")
        if not sep or key not in _CRON2_KEYS:
            raise TriggerError(f"unknown cron2 key {key!r} (known: {', '.join(_CRON2_KEYS)})")
        number = _parse_int(text)
        if number is None:
            raise TriggerError(f"cron2 key {key} needs an integer, got {text!r}")
        settings[key] = number
    harakiri = settings.get("harakiri")
    return Cron(
        None,
        settings.get("minute", -1),
        settings.get("hour", -1),
        settings.get("day", -1),
        settings.get("month", -1),
        settings.get("week", -1),
        command=command,
        unique=bool(settings.get("unique", 0)),
        harakiri=0 if harakiri is None else (harakiri if harakiri > 0 else -1),
    )


def parse_touch_signal_option(value: str, *, option: str = "touch-signal") -> tuple[str, int]:
    """``--touch-signal "FILE NUM"`` / ``--fs-signal "PATH NUM"`` -> (path, signum).

    The number is the last word, so a path may hold spaces.
    """
    parts = value.strip().rsplit(None, 1)
    signum = _parse_int(parts[1]) if len(parts) == 2 else None
    if signum is None:
        raise TriggerError(f"invalid {option} syntax, must be: <file> <signal>")
    return parts[0], check_signum(signum)
