"""The stats document: uWSGI 2.0's stats JSON, plus what uWSGI does not report.

Every key that uwsgitop and the common exporters read is here with real values from the
scoreboard (``version``, ``listen_queue``, ``pid``, ``workers[]`` with ``requests``,
``status``, ``rss``, ``avg_rt``, ``cores[]``...). muleteer adds ``mules`` (with message
and signal counters), ``farms``, ``queues``, ``signals`` (raised, delivered, held,
dropped per number), ``timers``, ``rb_timers``, ``crons`` and ``file_monitors`` with
their next due time. Nothing from the environment or from requests is included.
"""

from __future__ import annotations

import datetime
import os
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING, Any

from muleteer import __version__
from muleteer import options as o
from muleteer.scoreboard import F, I, Status

if TYPE_CHECKING:
    from muleteer.arbiter import Master

_STATUS = {Status.IDLE: "idle", Status.BUSY: "busy", Status.STOPPING: "pause", Status.DEAD: "cheap"}


def _status(code: int, signum: int) -> str:
    if code == Status.SIGNAL:
        return f"sig{signum}"
    try:
        return _STATUS[Status(code)]
    except (ValueError, KeyError):
        return "idle"


def _memory(pid: int) -> tuple[int, int]:
    """(rss, vsz) in bytes from /proc; zeros when unavailable."""
    if not pid:
        return 0, 0
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            fields = handle.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[1]) * page, int(fields[0]) * page
    except (OSError, ValueError, IndexError):
        return 0, 0


def _listen_queue(sock: socket.socket) -> tuple[int, int]:
    """(connections waiting to be accepted, backlog) of a TCP listener on Linux."""
    if not sys.platform.startswith("linux") or sock.family not in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return 0, 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return 0, 0
    # struct tcp_info: 8 single-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked,
    # sacked; on a listening socket Linux reports the accept queue in unacked and the
    # backlog in sacked.
    unacked, sacked = struct.unpack_from("II", info, 24)
    return unacked, sacked


def _wall(mono_due: float | None, mono_now: float, wall_now: float) -> float | None:
    return None if mono_due is None else round(wall_now + (mono_due - mono_now), 3)


def snapshot(master: Master) -> dict[str, Any]:
    sb = master.scoreboard
    hub = master.hub
    channels = master.channels
    mono_now = time.monotonic()
    wall_now = time.time()
    queue_total = 0
    sockets = []
    for listener in master.listeners:
        queue, backlog = _listen_queue(listener.sock)
        queue_total += queue
        sockets.append(
            {
                "name": listener.name,
                "proto": listener.protocol,
                "queue": queue,
                "max_queue": backlog or master.config.get(o.LISTEN),
                "shared": 0,
                "can_offload": 0,
            }
        )
    workers = []
    for slot in master.slots:
        if slot.kind != "worker":
            continue
        index = sb.worker_slot(slot.id)
        get = sb.get
        pid = get(index, I.PID)
        rss, vsz = _memory(pid)
        requests = get(index, I.REQUESTS)
        status = get(index, I.STATUS)
        in_request = int(status == Status.BUSY)  # one field, so it agrees with "status"
        workers.append(
            {
                "id": slot.id,
                "pid": pid,
                "accepting": get(index, I.ACCEPTING),
                "requests": requests,
                "delta_requests": get(index, I.DELTA_REQUESTS),
                "exceptions": get(index, I.EXCEPTIONS),
                "harakiri_count": get(index, I.HARAKIRI_COUNT),
                "signals": get(index, I.SIGNALS),
                "signal_queue": channels.worker_signals[slot.id].pending(),
                "status": _status(status, get(index, I.SIGNUM)),
                "rss": rss,
                "vsz": vsz,
                "running_time": get(index, I.RUNNING_TIME),
                "last_spawn": int(sb.getf(index, F.LAST_SPAWN)),
                "respawn_count": get(index, I.RESPAWNS),
                "tx": get(index, I.TX),
                "avg_rt": get(index, I.AVG_RT),
                "apps": [
                    {
                        "id": 0,
                        "modifier1": 0,
                        "mountpoint": "",
                        "startup_time": 0,
                        "requests": requests,
                        "exceptions": get(index, I.EXCEPTIONS),
                        "chdir": "",
                    }
                ],
                "cores": [
                    {
                        "id": 0,
                        "requests": requests,
                        "static_requests": 0,
                        "routed_requests": 0,
                        "offloaded_requests": 0,
                        "write_errors": 0,
                        "read_errors": 0,
                        "in_request": in_request,
                        "vars": [],
                        "req_info": {},
                    }
                ],
            }
        )
    mules = []
    for spec in master.mule_specs:
        index = sb.mule_slot(spec.id)
        pid = sb.get(index, I.PID)
        rss, vsz = _memory(pid)
        own = channels.mule_queues[spec.id].index
        status = sb.get(index, I.STATUS)
        mules.append(
            {
                "id": spec.id,
                "pid": pid,
                "status": "busy" if status in (Status.BUSY, Status.SIGNAL) else "idle",
                "signum": sb.get(index, I.SIGNUM) if status == Status.SIGNAL else None,
                "program": spec.program,
                "farms": channels.farms_of(spec.id),
                "signals": sb.get(index, I.SIGNALS),
                "signal_queue": channels.mule_signals[spec.id].pending(),
                "messages_received": sb.slot_total(sb.received_base, index),
                "messages_unhandled": sb.get(index, I.MSGS_UNHANDLED),
                "messages_rejected": sb.rejected(own),
                "queue": sb.depth(own),
                "respawn_count": sb.get(index, I.RESPAWNS),
                "last_spawn": int(sb.getf(index, F.LAST_SPAWN)),
                "harakiri_count": sb.get(index, I.HARAKIRI_COUNT),
                "rss": rss,
                "vsz": vsz,
            }
        )
    queues = [
        {
            "name": q.name,
            "sent": sb.sent(q.index),
            "received": sb.received(q.index),
            "rejected": sb.rejected(q.index),
            "depth": sb.depth(q.index),
        }
        for q in channels.queues()
    ]
    farms = [
        {
            "name": name,
            "mules": list(ids),
            "queue": sb.depth(channels.farm_queues[name].index),
            "signal_queue": channels.farm_signals[name].pending(),
        }
        for name, ids in channels.farm_members.items()
    ]
    delivery = hub.delivery
    held = delivery.held_by_num()
    signals = []
    for num in sorted(set(hub.table.entries) | set(hub.table.unregistered_raised)):
        entry = hub.table.entries.get(num)
        signals.append(
            {
                "num": num,
                "target": entry.target.text if entry else None,
                "registered_by": sorted(entry.registrants) if entry else [],
                "raised": entry.raised if entry else hub.table.unregistered_raised.get(num, 0),
                "delivered": delivery.delivered_by_num.get(num, 0),
                "held": held.get(num, 0),
                "dropped": delivery.dropped_by_num.get(num, 0),
            }
        )
    triggers = hub.triggers
    now_dt = datetime.datetime.fromtimestamp(wall_now)
    crons = []
    for cron in triggers.crons:
        upcoming = cron.next_fire(now_dt)
        crons.append(
            {
                "minute": cron.minute,
                "hour": cron.hour,
                "day": cron.day,
                "month": cron.month,
                "week": cron.weekday,
                "signum": cron.signum,
                "command": cron.command or "",
                "unique": int(cron.unique),
                "pid": cron.pid or 0,
                "started_at": int(cron.started_at or 0),
                "last_fired": cron.last_fired,
                "next_due": upcoming.timestamp() if upcoming else None,
            }
        )
    return {
        "version": f"2.0.31-muleteer-{__version__}",
        "listen_queue": queue_total,
        "listen_queue_errors": 0,
        "signal_queue": channels.any_worker.pending(),
        "load": queue_total,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "locks": [{"user 0": 0}],
        "sockets": sockets,
        "workers": workers,
        "mules": mules,
        "farms": farms,
        "queues": queues,
        "signals": signals,
        "timers": [
            {
                "signum": t.signum,
                "interval": t.interval,
                "fired": t.fired,
                "next_due": _wall(t.next_due, mono_now, wall_now),
            }
            for t in triggers.timers
        ],
        "rb_timers": [
            {
                "signum": t.signum,
                "interval": t.interval,
                "iterations": t.iterations,
                "fired": t.fired,
                "next_due": None if t.finished else _wall(t.next_due, mono_now, wall_now),
            }
            for t in triggers.rb_timers
        ],
        "crons": crons,
        "file_monitors": [
            {"signum": m.signum, "path": m.path, "fired": m.fired} for m in hub.file_monitors
        ],
        "muleteer": {
            "version": __version__,
            "reloads": master.reloads,
            "phase": master.phase.value,
        },
    }
