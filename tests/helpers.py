"""Small clients for the integration tests: raw HTTP and the uwsgi protocol.

The uwsgi packet encoder here is written independently of ``muleteer.uwsgi_proto`` on
purpose, so the server's codec is checked against a second implementation.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

APPS = Path(__file__).parent / "apps"


def app_path(name: str) -> str:
    return str(APPS / name)


def uwsgi_packet(variables: dict[str, str], body: bytes = b"", modifier1: int = 0) -> bytes:
    block = b"".join(
        struct.pack("<H", len(k.encode("latin-1")))
        + k.encode("latin-1")
        + struct.pack("<H", len(v.encode("latin-1")))
        + v.encode("latin-1")
        for k, v in variables.items()
    )
    return struct.pack("<BHB", modifier1, len(block), 0) + block + body


def uwsgi_vars(
    path: str = "/", method: str = "GET", body: bytes = b"", **extra: str
) -> dict[str, str]:
    path_info, _, query = path.partition("?")
    variables = {
        "REQUEST_METHOD": method,
        "REQUEST_URI": path,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "localhost",
    }
    if body:
        variables["CONTENT_LENGTH"] = str(len(body))
    variables.update(extra)
    return variables


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def uwsgi_request(
    address: tuple[str, int] | str,
    variables: dict[str, str],
    body: bytes = b"",
    timeout: float = 10.0,
) -> bytes:
    """Send one uwsgi packet and return the raw response (the server closes after it)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(uwsgi_packet(variables, body))
        return read_all(sock, timeout)


def raw_http(port: int, data: bytes, timeout: float = 5.0, shut: bool = False) -> bytes:
    """Send raw bytes on a new connection; return everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock, timeout)


def status_of(response: bytes) -> int:
    if not response:
        return 0
    return int(response.split(b"\r\n", 1)[0].split(b" ")[1])


def split_response(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def poll_file(path: str | Path, predicate=lambda text: bool(text), timeout: float = 10.0) -> str:
    """Wait until the file exists and `predicate(its text)` holds; return the text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = Path(path).read_text()
        except OSError:
            text = ""
        if predicate(text):
            return text
        time.sleep(0.01)
    raise TimeoutError(f"{path}: condition not met within {timeout} s; last content:\n{text}")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except OSError:
        return False


def env_with_src() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")])}


# -- /proc ------------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def proc_state(pid: int) -> str:
    """One-letter process state, or "" when the pid no longer exists."""
    fields = stat_fields(pid)
    return fields[0].decode() if fields else ""


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    return proc_state(pid) not in ("", "Z")


def proc_age(pid: int) -> float:
    """Seconds since the process started (from /proc, 1/CLK_TCK resolution)."""
    fields = stat_fields(pid)
    if fields is None:
        return 0.0
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
