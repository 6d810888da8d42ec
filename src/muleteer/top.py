"""``muleteer top ADDR``: a terminal view of a running server, like uwsgitop, with mules.

It reads the stats document from ADDR once a second: ``host:port`` or a unix socket path
(``--stats``), or ``http://host:port`` (``--stats`` with ``--stats-http``), and draws
workers, mules, farms, queues and signal counters with curses. ``q`` quits.
"""

from __future__ import annotations

import curses
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from muleteer.sockets import parse_address


def fetch(address: str, timeout: float = 2.0) -> dict[str, Any]:
    """The stats document at `address` (raw stats socket or ``http://``)."""
    http = address.startswith("http://")
    target = address[7:].split("/", 1)[0] if http else address
    parsed = parse_address(target)
    if parsed.family == "tcp":
        host = "127.0.0.1" if parsed.host in ("0.0.0.0", "") else parsed.host
        sock = socket.create_connection((host, parsed.port), timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(parsed.path if parsed.family == "unix" else "\0" + parsed.path)
        except OSError:
            sock.close()
            raise
    with sock:
        if http:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: stats\r\n\r\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    payload = b"".join(chunks)
    if payload.startswith(b"HTTP/"):
        payload = payload.split(b"\r\n\r\n", 1)[1]
    result: dict[str, Any] = json.loads(payload)
    return result


def _human(num: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(num) < 1024:
            return f"{num:.0f}{unit}"
        num /= 1024
    return f"{num:.0f}T"


def render(stats: dict[str, Any], previous: dict[str, Any] | None, interval: float) -> list[str]:
    """The screen as lines of text (pure, so it is testable without a terminal)."""
    before = {w["id"]: w["requests"] for w in (previous or {}).get("workers", [])}
    total = sum(w["requests"] for w in stats["workers"])
    rate = 0.0
    if previous is not None and interval > 0:
        rate = (total - sum(before.values())) / interval
    lines = [
        f"muleteer {stats.get('version', '?')} - master pid {stats.get('pid')} - "
        f"listen queue {stats.get('listen_queue', 0)} - requests {total} ({rate:.1f}/s)",
        "",
        f"{'WID':>4} {'PID':>7} {'REQ':>9} {'RPS':>7} {'EXC':>5} {'SIG':>6} {'STATUS':>8} "
        f"{'AVG(ms)':>8} {'RSS':>6} {'TX':>7} {'RESPAWN':>7}",
    ]
    for w in stats["workers"]:
        rps = (w["requests"] - before.get(w["id"], w["requests"])) / interval if interval else 0
        lines.append(
            f"{w['id']:>4} {w['pid']:>7} {w['requests']:>9} {rps:>7.1f} {w['exceptions']:>5} "
            f"{w['signals']:>6} {w['status']:>8} {w['avg_rt'] / 1000:>8.2f} "
            f"{_human(w['rss']):>6} {_human(w['tx']):>7} {w['respawn_count']:>7}"
        )
    mules = stats.get("mules", [])
    if mules:
        lines += [
            "",
            f"{'MULE':>4} {'PID':>7} {'STATUS':>6} {'SIGNALS':>7} {'MSGS':>8} "
            f"{'REJECTED':>8} {'QUEUE':>6} {'RESPAWN':>7}  PROGRAM / FARMS",
        ]
        for m in mules:
            lines.append(
                f"{m['id']:>4} {m['pid']:>7} {m['status']:>6} {m['signals']:>7} "
                f"{m['messages_received']:>8} {m['messages_rejected']:>8} {m['queue']:>6} "
                f"{m['respawn_count']:>7}  {m['program'] or 'signal-only'}"
                f"{' / ' + ','.join(m['farms']) if m['farms'] else ''}"
            )
    farms = stats.get("farms", [])
    if farms:
        lines += [
            "",
            "FARMS: "
            + "  ".join(
                f"{f['name']}={','.join(map(str, f['mules']))} (queue {f['queue']})" for f in farms
            ),
        ]
    signals = stats.get("signals", [])
    if signals:
        lines += [
            "",
            f"{'SIG':>4} {'TARGET':>14} {'RAISED':>8} {'DELIVERED':>9} {'HELD':>6} {'DROPPED':>7}",
        ]
        for s in signals:
            lines.append(
                f"{s['num']:>4} {s['target'] or '(none)'!s:>14} {s['raised']:>8} "
                f"{s['delivered']:>9} {s['held']:>6} {s['dropped']:>7}"
            )
    timers = stats.get("timers", []) + stats.get("rb_timers", [])
    if timers or stats.get("crons"):
        lines += [
            "",
            f"timers: {len(timers)}  crons: {len(stats.get('crons', []))}  "
            f"file monitors: {len(stats.get('file_monitors', []))}",
        ]
    return lines


def _loop(screen: Any, address: str) -> None:
    curses.curs_set(0)
    screen.timeout(1000)
    previous: dict[str, Any] | None = None
    last = time.monotonic()
    while True:
        now = time.monotonic()
        try:
            stats = fetch(address)
            lines = render(stats, previous, now - last)
            previous, last = stats, now
        except (OSError, ValueError) as exc:
            lines = [f"muleteer top: cannot read stats from {address}: {exc}"]
        screen.erase()
        height, width = screen.getmaxyx()
        for row, line in enumerate(lines[: height - 1]):
            screen.addnstr(row, 0, line, width - 1)
        screen.addnstr(height - 1, 0, "q: quit", width - 1)
        screen.refresh()
        if screen.getch() in (ord("q"), ord("Q")):
            return


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        sys.stderr.write(
            "usage: muleteer top ADDR   (host:port, a unix path, or http://host:port)\n"
        )
        return 2
    try:
        curses.wrapper(_loop, argv[0])
    except KeyboardInterrupt:
        pass
    return 0
