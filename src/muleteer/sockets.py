"""Listening sockets: address syntax, binding (once, in the master) and inheritance.

Listeners are bound by the master before any fork and shared by every worker; the
kernel hands each new connection to exactly one ``accept()``. They are never bound per
worker with SO_REUSEPORT: when one of those sockets closes, the connections already
queued on it are reset. Across a reload (re-exec of the master) the same descriptors are
passed on through ``MULETEER_LISTEN_FDS`` so no connection is refused meanwhile.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import sys
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

INHERIT_ENV = "MULETEER_LISTEN_FDS"


class AddressError(ValueError):
    """A socket address that cannot be used; the message says why."""


@dataclass(frozen=True)
class Address:
    family: str  # "tcp", "unix" or "abstract"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.family == "tcp":
            return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return self.path if self.family == "unix" else "@" + self.path


def parse_address(text: str) -> Address:
    """``host:port``, ``:port`` (all interfaces), ``[::1]:port``, ``/path`` or ``@abstract``."""
    value = text.strip()
    if not value:
        raise AddressError("empty address")
    if value.startswith("@"):
        if not sys.platform.startswith("linux"):
            raise AddressError("abstract unix sockets exist only on Linux")
        return Address("abstract", path=value[1:])
    if "/" in value or ":" not in value:
        return Address("unix", path=value)  # uWSGI: anything without a colon is a unix path
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"invalid port {port_text!r}")
    return Address("tcp", host=host or "0.0.0.0", port=int(port_text))


@dataclass
class Listener:
    sock: socket.socket
    protocol: str  # "http" or "uwsgi"
    spec: str  # the address as configured
    name: str  # the address actually bound (resolves :0 and host names)
    # Read once: socket.socket's family/type properties build an enum member per access,
    # which the accept path would otherwise pay on every connection.
    is_tcp: bool = field(init=False)
    kind: tuple[int, int, int] = field(init=False)  # (family, type, proto) as plain ints
    fd: int = field(init=False)

    def __post_init__(self) -> None:
        family = int(self.sock.family)
        self.is_tcp = family in (socket.AF_INET, socket.AF_INET6)
        self.kind = (family, int(self.sock.type), self.sock.proto)
        self.fd = self.sock.fileno()


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _remove_stale_unix(path: str) -> None:
    """Unlink a leftover socket file, but refuse anything else or a socket still in use."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise AddressError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a stale file from a previous run
        return
    finally:
        probe.close()
    raise AddressError(f"{path} is in use by another process")


def _bind_unix(address: Address, mode: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if address.family == "abstract":
        sock.bind("\0" + address.path)
        return sock
    _remove_stale_unix(address.path)
    # The umask is narrowed around bind() so the socket is owner-only from its first
    # instant; a chmod() afterwards would leave a window where anyone could connect.
    previous = os.umask(0o177)
    try:
        sock.bind(address.path)
    finally:
        os.umask(previous)
    if mode is not None:
        os.chmod(address.path, mode)
    return sock


def _bind_tcp(address: Address) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise AddressError(f"cannot resolve {address.host!r}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    # SO_REUSEADDR lets a restarted server bind while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(sockaddr)
    return sock


def bind(spec: str, protocol: str, backlog: int, mode: int | None) -> Listener:
    """Bind and listen on one configured address. Raises AddressError or OSError."""
    address = parse_address(spec)
    if address.family == "tcp":
        sock = _bind_tcp(address)
        host, port = sock.getsockname()[:2]
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not _is_loopback(address.host) and protocol == "uwsgi":
            log.warning(
                "uwsgi socket %s is bound to a non-loopback address: the uwsgi protocol lets "
                "the peer set any environ variable (see uwsgi-allow-ips)",
                name,
            )
    else:
        sock = _bind_unix(address, mode)
        name = str(address)
    if (
        address.family == "tcp"
        and protocol in ("http", "uwsgi")
        and hasattr(socket, "TCP_DEFER_ACCEPT")
    ):
        # The kernel hands a connection to accept() only once its first bytes arrived (or
        # after about 5 s of silence), so a worker rarely holds a connection that has
        # nothing to serve yet: fewer connections die with a killed worker, and a client
        # that connects and says nothing costs no worker until then.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    sock.listen(backlog)
    # O_NONBLOCK lives on the shared open file description, so setting it once here holds
    # in every worker: a worker that loses the accept() race gets EAGAIN, not a hang.
    sock.setblocking(False)
    return Listener(sock, protocol, spec, name)


def take_inherited(environ: MutableMapping[str, str]) -> dict[tuple[str, str], Listener]:
    """Listeners passed on by the previous master across a reload, by (protocol, address).

    The variable is removed from `environ` so that children and the app never see it.
    """
    found: dict[tuple[str, str], Listener] = {}
    text = environ.pop(INHERIT_ENV, "")
    for item in filter(None, text.split(";")):
        fd_text, protocol, name, spec = item.split("|", 3)
        try:
            sock = socket.socket(fileno=int(fd_text))
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            continue
        os.set_inheritable(sock.fileno(), False)
        sock.setblocking(False)
        found[(protocol, spec)] = Listener(sock, protocol, spec, name)
    return found


def export_for_exec(listeners: Iterable[Listener]) -> str:
    """Mark the listeners inheritable and describe them for the re-executed master."""
    parts = []
    for listener in listeners:
        os.set_inheritable(listener.sock.fileno(), True)
        parts.append(
            f"{listener.sock.fileno()}|{listener.protocol}|{listener.name}|{listener.spec}"
        )
    return ";".join(parts)


def unlink_unix(listeners: Iterable[Listener]) -> None:
    """``vacuum``: remove the socket files we created."""
    for listener in listeners:
        if listener.sock.family == socket.AF_UNIX and not listener.name.startswith("@"):
            try:
                os.unlink(listener.name)
            except OSError:
                pass
