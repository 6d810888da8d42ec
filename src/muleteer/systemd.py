"""systemd notifications (``Type=notify``), in pure Python: no libsystemd.

When ``NOTIFY_SOCKET`` is set, the master sends ``READY=1`` once every worker and mule
is up, ``RELOADING=1`` (with ``MONOTONIC_USEC``) before a reload and ``READY=1`` again
after it (the reloaded master keeps its pid), ``STOPPING=1`` on shutdown, ``STATUS=``
lines, and ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` when the watchdog is enabled.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if self.sock is not None and usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog = int(usec) / 2_000_000  # ping twice per interval, as advised
        self.next_ping = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *lines: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def tick(self, now: float) -> float | None:
        """Ping the watchdog when due; the next time to call, or None without watchdog."""
        if self.watchdog is None:
            return None
        if now >= self.next_ping:
            self.send("WATCHDOG=1")
            self.next_ping = now + self.watchdog
        return self.next_ping
