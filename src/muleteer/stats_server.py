"""The stats server (``--stats ADDR``), served from the master's loop without ever blocking it.

Each connection gets the whole JSON document and is closed, as in uWSGI. With
``--stats-http`` the request is read first and the reply is an HTTP/1.0 response; the
path ``/metrics`` answers Prometheus text instead. Every client has a one-second
deadline for the whole exchange and at most 16 are served at once: a client that
connects and never reads is dropped, it never stalls the master (uWSGI's stats writes
block its master for up to the socket timeout).

By default the address must be loopback or a unix socket (mode 0600); a public address
needs ``--stats-allow-public``.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from muleteer import sockets

log = logging.getLogger(__name__)

DEADLINE = 1.0
MAX_CLIENTS = 16
MAX_REQUEST = 8192
READ, WRITE = 1, 2


class StatsAddressError(ValueError):
    pass


@dataclass
class _Client:
    sock: socket.socket
    deadline: float
    request: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None


def _is_public(address: sockets.Address) -> bool:
    if address.family != "tcp":
        return False
    host = address.host
    return not (host == "localhost" or host == "::1" or host.startswith("127."))


class StatsServer:
    def __init__(
        self,
        address: str,
        http: bool,
        minified: bool,
        allow_public: bool,
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        parsed = sockets.parse_address(address)
        if _is_public(parsed) and not allow_public:
            raise StatsAddressError(
                f"stats address {address!r} is not loopback: the stats expose process "
                "details to anyone who connects (add --stats-allow-public if you mean it)"
            )
        self.listener = sockets.bind(address, "stats", 128, None)
        self.http = http
        self.minified = minified
        self.snapshot = snapshot
        self.clients: dict[int, _Client] = {}
        self.served = 0
        self.dropped = 0
        self.changes = 0  # bumped whenever interest() would answer differently
        self.closed: set[int] = set()  # fds closed since the loop last asked (take_closed)
        log.info("stats server enabled on %s%s", self.listener.name, " (http)" if http else "")

    def fileno(self) -> int:
        return self.listener.sock.fileno()

    def _document(self) -> bytes:
        data = self.snapshot()
        if self.minified:
            return json.dumps(data, separators=(",", ":")).encode()
        return json.dumps(data, indent="\t").encode()

    def accept(self, now: float) -> None:
        for _ in range(MAX_CLIENTS):
            try:
                sock, _ = self.listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            if len(self.clients) >= MAX_CLIENTS:
                self.dropped += 1
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, now + DEADLINE)
            self.clients[sock.fileno()] = client
            self.changes += 1
            if not self.http:
                client.out = memoryview(self._document())
                self._write(client)

    def _reply_http(self, client: _Client) -> None:
        line = bytes(client.request).split(b"\r\n", 1)[0].split(b" ")
        path = line[1].decode("latin-1", "replace") if len(line) > 1 else "/"
        if path.split("?", 1)[0] == "/metrics":
            # prometheus_client costs several MiB: only a server asked for /metrics pays.
            from muleteer import metrics

            body = metrics.exposition(self.snapshot)
            ctype = "text/plain; version=0.0.4; charset=utf-8"
        else:
            body = self._document()
            ctype = "application/json"
        head = (
            f"HTTP/1.0 200 OK\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        client.out = memoryview(head.encode() + body)
        self.changes += 1
        self._write(client)

    def _write(self, client: _Client) -> None:
        assert client.out is not None
        try:
            while client.out:
                sent = client.sock.send(client.out)
                client.out = client.out[sent:]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client, "write failed")
            return
        self._close(client)

    def _close(self, client: _Client) -> None:
        self.changes += 1
        self.closed.add(client.sock.fileno())
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()
        self.served += 1

    def _drop(self, client: _Client, why: str) -> None:
        self.changes += 1
        self.closed.add(client.sock.fileno())
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()
        self.dropped += 1
        log.debug("stats client dropped: %s", why)

    def on_event(self, fd: int) -> None:
        client = self.clients.get(fd)
        if client is None:
            return
        if client.out is not None:
            self._write(client)
            return
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client, "read failed")
            return
        if not data:
            self._drop(client, "closed before its request")
            return
        client.request += data
        if b"\r\n\r\n" in client.request or b"\n\n" in client.request:
            self._reply_http(client)
        elif len(client.request) > MAX_REQUEST:
            self._drop(client, "request too large")

    def drop_all(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client, "server error")

    def take_closed(self) -> set[int]:
        """Descriptors closed since the last call: the kernel already dropped them from
        the master's epoll, and their numbers may be reused by the next client."""
        closed, self.closed = self.closed, set()
        return closed

    def interest(self) -> dict[int, int]:
        """fd -> READ or WRITE for every client, for the master's selector."""
        return {fd: WRITE if c.out is not None else READ for fd, c in self.clients.items()}

    def expire(self, now: float) -> None:
        for client in list(self.clients.values()):
            if now >= client.deadline:
                self._drop(client, "too slow")

    def next_deadline(self) -> float | None:
        return min((c.deadline for c in self.clients.values()), default=None)

    def close(self) -> None:
        for client in list(self.clients.values()):
            client.sock.close()
        self.clients.clear()
        if self.listener.sock.family == socket.AF_UNIX:
            sockets.unlink_unix([self.listener])
        self.listener.sock.close()
