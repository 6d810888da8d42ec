"""pytest plugin (entry point ``pytest11``): run a real muleteer server in a test.

``muleteer_server(*options, app=..., ...)`` starts ``python -m muleteer`` in its own process
group on a free loopback port, waits (with a deadline, never a fixed sleep) until it
answers, and always tears it down - the whole process group - at the end of the test::

    def test_hello(muleteer_server):
        server = muleteer_server("--processes", "2", app="myapp.py")
        assert server.get("/").status == 200
        server.wait_for(lambda: "spawned" in server.log_text(), timeout=5)
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or predicate!r}")
        time.sleep(interval)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def process_title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) child pids of `pid`, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != b"Z":
            out.append(int(entry))
    return sorted(out)


class ServerProcess:
    """One ``python -m muleteer`` process tree, started and stopped by a test."""

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        protocol: str = "http",
    ) -> None:
        self.port = port
        self.protocol = protocol
        self.args = list(args)
        self.workdir = workdir
        self.log_path = workdir / f"muleteer-{port or os.getpid()}-{time.monotonic_ns()}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready: bool = True, timeout: float = 20.0) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "muleteer", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
            )
        if ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def answered() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"muleteer exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            text = self.log_text()
            if "spawned muleteer worker" not in text and "spawned muleteer mule" not in text:
                return False
            if self.port is None:
                return True
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(answered, timeout, what=f"muleteer on port {self.port}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        regex = re.compile(pattern)

        def found() -> list[str]:
            lines = [line for line in self.log_text().splitlines() if regex.search(line)]
            return lines if len(lines) >= count else []

        return list(wait_for(found, timeout, what=f"log line /{pattern}/ x{count}"))

    def children(self) -> dict[int, str]:
        """{pid: title} of the master's live children."""
        return {pid: process_title(pid) for pid in children_of(self.pid)}

    def pids(self, role: str) -> list[int]:
        """Pids of children whose title contains `role` ("worker", "mule 2", ...)."""
        return [pid for pid, title in self.children().items() if f"muleteer {role}" in title]

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, signum: int = signal.SIGINT, timeout: float = 15.0) -> int | None:
        """Stop the server and kill anything left in its process group."""
        if self.proc is None:
            return None
        return stop_process_group(self.proc, signum, timeout)


def stop_process_group(
    proc: subprocess.Popen[bytes], signum: int = signal.SIGINT, timeout: float = 15.0
) -> int:
    """Stop a process started in its own session: `signum` to its leader, then SIGKILL to
    whatever is left of the group, and return the leader's exit code.

    The group is killed *before* the leader is reaped: until then its zombie holds the
    pid, so the group id cannot have been given to an unrelated process group."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # WNOWAIT: learn that the leader exited without reaping it.
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            time.sleep(0.01)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return proc.wait(10)


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def muleteer_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Factory: ``muleteer_server(*options, app=None, protocol="http", env=None, ready=True)``.

    `app` (a path) becomes ``--wsgi-file``; with ``listen=True`` (the default) a listener
    on a free loopback port is added (``--http-socket``, or ``--socket`` with
    ``protocol="uwsgi"``); pass ``listen=False`` (and ``port=`` if you bind one yourself)
    to configure the sockets in the options.
    """
    started: list[ServerProcess] = []

    def factory(
        *options: str,
        app: str | os.PathLike[str] | None = None,
        protocol: str = "http",
        env: dict[str, str] | None = None,
        ready: bool = True,
        timeout: float = 20.0,
        cwd: Path | None = None,
        listen: bool = True,
        port: int | None = None,
    ) -> ServerProcess:
        args = list(options)
        if listen:
            port = free_port()
            flag = "--socket" if protocol == "uwsgi" else "--http-socket"
            args[:0] = [flag, f"127.0.0.1:{port}"]
        if app is not None:
            args += ["--wsgi-file", os.fspath(app)]
        server = ServerProcess(args, cwd or tmp_path, env, port, protocol)
        started.append(server)
        return server.start(ready=ready, timeout=timeout)

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def uwsgi_env() -> Iterator[Callable[..., Any]]:
    """Factory for the in-process harness (``muleteer.testing``): ``uwsgi_env(workers=2,
    mules=2, farms={...}, options=[...], start=datetime)`` installs an ``uwsgi`` module
    with virtual workers and mules and a fake clock; everything is uninstalled after the
    test."""
    from muleteer import testing

    made: list[testing.Harness] = []

    def factory(**kw: Any) -> testing.Harness:
        harness = testing.install(**kw)
        made.append(harness)
        return harness

    yield factory
    for harness in reversed(made):
        harness.uninstall()
