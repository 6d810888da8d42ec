"""Support code for reliability suites B, C and F (not an app): anchor servers installed at
test time (gunicorn, waitress, uWSGI), a raw HTTP exchange with a response reader, a paced
open-loop GET client and a slowloris driver.

The anchors are black boxes: they are installed with pip into a throwaway directory (uWSGI,
which compiles with gcc, into a cache keyed by its version) and run on the same echo app
(``bcf_echo.py``) as muleteer. Nothing of them is imported into the test process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from loadclient import Outcome, read_response
from muleteer.pytest_plugin import free_port, stop_process_group

T = TypeVar("T")

APPS_DIR = Path(__file__).resolve().parent
ECHO_APP = APPS_DIR / "bcf_echo.py"

UWSGI_VERSION = "2.0.31"
GUNICORN = "gunicorn==27.0.1"
WAITRESS = "waitress==3.0.2"


# -- installing the anchors -----------------------------------------------------------------


def pip_install(target: Path, *requirements: str, timeout: float = 900) -> str:
    """pip install requirements into target (``--target``): "" on success, else the reason.

    A finished install leaves ``.done``, so a second call (another test module, another
    run with the same cache) returns at once.
    """
    if (target / ".done").exists():
        return ""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--disable-pip-version-check",
                "install",
                "-q",
                "--no-input",
                "--target",
                str(target),
                *requirements,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"pip install {' '.join(requirements)} timed out after {timeout:g} s"
    if result.returncode != 0:
        tail = " | ".join(
            line for line in result.stderr.strip().splitlines()[-4:] if "is ignored" not in line
        )
        return f"pip install {' '.join(requirements)} failed: {tail}"
    (target / ".done").touch()
    return ""


def uwsgi_cache_dir() -> Path:
    root = os.environ.get("MULETEER_TEST_UWSGI_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "muleteer-test-uwsgi"
    return base / UWSGI_VERSION


_UWSGI: tuple[Path | None, str] | None = None


def uwsgi_binary() -> tuple[Path | None, str]:
    """(path of a uWSGI binary built from PyPI, "") or (None, why it is unavailable).

    Built once per version into ``~/.cache/muleteer-test-uwsgi/<version>`` (gcc, ~30-60 s
    uncached), then reused by every later run.
    """
    global _UWSGI
    if _UWSGI is not None:
        return _UWSGI
    cache = uwsgi_cache_dir()
    binary = cache / "bin" / "uwsgi"
    reason = pip_install(cache, f"uwsgi=={UWSGI_VERSION}")
    if not reason:
        try:
            probe = subprocess.run(
                [str(binary), "--version"], capture_output=True, text=True, timeout=30
            )
            version = probe.stdout.strip()
        except OSError as exc:
            version = f"cannot run: {exc}"
        if version != UWSGI_VERSION:
            reason = f"the uWSGI built in {cache} reports {version!r}"
            (cache / ".done").unlink(missing_ok=True)
    _UWSGI = (None, reason) if reason else (binary, "")
    return _UWSGI


_ORACLES: dict[Path, str] = {}


def oracle_site(base: Path) -> tuple[Path, str]:
    """gunicorn and waitress installed into base/oracles: (site dir, "" or why not)."""
    site = base / "bcf-oracles"
    if site not in _ORACLES:
        _ORACLES[site] = pip_install(site, GUNICORN, WAITRESS, timeout=300)
    return site, _ORACLES[site]


# -- running them ---------------------------------------------------------------------------


class Anchor:
    """One anchor server process (own session, log in `logdir`), stopped by its process
    group; a context manager that stops it on exit."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        logdir: Path,
        env: dict[str, str],
        cwd: Path = APPS_DIR,
        stop_signal: signal.Signals = signal.SIGINT,
        stop_timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.log_path = logdir / f"{name}-{port}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process, without waiting for anything."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        return self.proc

    def start(self, timeout: float = 30.0) -> Anchor:
        """Spawn, then wait until the port listens and an HTTP request is answered."""
        proc = self.spawn()
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not listen within {timeout:g} s")
            time.sleep(0.02)
        # Give the workers time to exist: wait until one answers a request.
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.sendall(b"GET /ready HTTP/1.0\r\nHost: a\r\n\r\n")
                    if sock.recv(16).startswith(b"HTTP/1."):
                        return self
            except OSError:
                time.sleep(0.02)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc, self.stop_signal, self.stop_timeout)

    def __enter__(self) -> Anchor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gunicorn_sync(site: Path, logdir: Path, workers: int = 2) -> Anchor:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "bcf_echo:application",
    ]
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(APPS_DIR)])}
    return Anchor("gunicorn-sync", argv, port, logdir, env).start()


def waitress(site: Path, logdir: Path) -> Anchor:
    port = free_port()
    argv = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "bcf_echo:application"]
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(APPS_DIR)])}
    return Anchor("waitress", argv, port, logdir, env).start()


def uwsgi(
    binary: Path, logdir: Path, protocol: str, *extra: str, env: dict[str, str] | None = None
) -> Anchor:
    """uWSGI with 2 processes and the echo app on ``--http-socket`` or ``--socket``."""
    port = free_port()
    flag = "--http-socket" if protocol == "http" else "--socket"
    argv = [
        str(binary),
        flag,
        f"127.0.0.1:{port}",
        "--master",
        "--processes",
        "2",
        "--wsgi-file",
        str(ECHO_APP),
        *extra,
    ]
    anchor = Anchor(f"uwsgi-{protocol}", argv, port, logdir, env or {})
    if protocol == "http":
        return anchor.start()
    # The readiness probe above speaks HTTP; for --socket only wait for the listener.
    return _start_listening(anchor)


def _start_listening(anchor: Anchor, timeout: float = 30.0) -> Anchor:
    proc = anchor.spawn()
    deadline = time.monotonic() + timeout
    while "spawned uWSGI worker 2" not in anchor.log_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            anchor.stop()
            raise RuntimeError(f"{anchor.name} did not start:\n{anchor.log_text()[-2000:]}")
        time.sleep(0.02)
    return anchor


# -- one raw HTTP exchange ------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool = True  # False: the stream ended inside this response

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def closes(self) -> bool:
        return "close" in (self.header("connection") or "").lower()


@dataclass
class Exchange:
    raw: bytes
    closed: bool  # the server closed (EOF or reset) before the deadline
    elapsed: float  # seconds from the last byte sent to the close (or the deadline)
    reset: bool = False
    responses: list[RawResponse] = field(default_factory=list)
    garbage: bytes = b""  # bytes that do not parse as a response

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def parse_responses(data: bytes, head_only: Sequence[int] = ()) -> tuple[list[RawResponse], bytes]:
    """Split a response stream into responses; the second item is what does not parse.

    head_only: indexes of responses (to HEAD requests) that carry no body. 1xx are interim
    responses and are returned like the others.
    """
    out: list[RawResponse] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0 or not data.startswith(b"HTTP/1.", pos):
            return out, data[pos:]
        lines = data[pos:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            return out, data[pos:]
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                return out, data[pos:]
            headers.append((name, value.strip(" \t")))
        response = RawResponse(status, headers, b"")
        pos = end + 4
        length = response.header("content-length")
        chunked = "chunked" in (response.header("transfer-encoding") or "").lower()
        if status < 200 or status in (204, 304) or len(out) in head_only:
            pass
        elif chunked:
            body = bytearray()
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    response.complete = False
                    body += data[pos:]
                    pos = len(data)
                    break
                size = int(data[pos:line_end].split(b";")[0] or b"0", 16)
                pos = line_end + 2
                if size == 0:
                    trailer_end = data.find(b"\r\n", pos)
                    pos = len(data) if trailer_end < 0 else trailer_end + 2
                    break
                body += data[pos : pos + size]
                if pos + size + 2 > len(data):
                    response.complete = False
                    pos = len(data)
                    break
                pos += size + 2
            response.body = bytes(body)
        elif length is not None:
            size = int(length)
            response.body = data[pos : pos + size]
            response.complete = pos + size <= len(data)
            pos = min(len(data), pos + size)
        else:  # close-delimited
            response.body = data[pos:]
            pos = len(data)
        out.append(response)
    return out, b""


@dataclass
class Received:
    raw: bytes  # everything the server sent
    closed: bool  # the server closed (or reset) the connection before the deadline
    reset: bool  # ... with a reset
    elapsed: float  # seconds from the last byte sent to the close or the deadline


def send_and_read(
    address: tuple[str, int] | str,
    data: bytes,
    deadline: float = 2.0,
    half_close: bool = False,
    source: str | None = None,
) -> Received:
    """Send data on a new TCP (host, port) or unix-socket connection and read until the
    server closes or `deadline` seconds after the last byte was sent."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if source is not None:
            sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(address)
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may refuse part way; what it answered is read below
        sent_at = time.monotonic()
        chunks: list[bytes] = []
        closed = reset = False
        while True:
            left = sent_at + deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = reset = True
                break
            if not piece:
                closed = True
                break
            chunks.append(piece)
        elapsed = time.monotonic() - sent_at
    finally:
        sock.close()
    return Received(b"".join(chunks), closed, reset, elapsed)


def exchange(
    port: int,
    data: bytes,
    deadline: float = 2.0,
    half_close: bool = False,
    source: str | None = None,
    head_only: Sequence[int] = (),
    host: str = "127.0.0.1",
) -> Exchange:
    """One HTTP exchange (:func:`send_and_read`), its responses parsed."""
    got = send_and_read((host, port), data, deadline, half_close, source)
    responses, garbage = parse_responses(got.raw, head_only)
    return Exchange(got.raw, got.closed, got.elapsed, got.reset, responses, garbage)


# -- paced legitimate GETs and slowloris ----------------------------------------------------


@dataclass
class SlowConn:
    first_byte: float
    closed_at: float | None  # None: still open when the run ended
    ended_at: float  # when the driver stopped watching it


async def _paced_get(port: int, path: str, timeout: float) -> Outcome:
    start = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        left = timeout - (time.monotonic() - start)
        status, _, _ = await asyncio.wait_for(read_response(reader), left)
        return Outcome(start, time.monotonic(), status)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        return Outcome(start, time.monotonic(), 0, f"{type(exc).__name__}: {exc}"[:100])
    finally:
        if writer is not None:
            writer.close()


async def _slow_slot(
    port: int, stop: asyncio.Event, out: list[SlowConn], delay: float, reconnect: bool
) -> None:
    """One slowloris slot: a head that never ends, one more field line per second; when
    the server closes it, a new one (as an attacker would) until `stop`."""
    await asyncio.sleep(delay)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        first = time.monotonic()
        closed_at: float | None = None
        writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        line = 0
        read = asyncio.ensure_future(reader.read(65536))
        while not stop.is_set():
            done, _ = await asyncio.wait({read}, timeout=1.0)
            if done:
                try:
                    data = read.result()
                except OSError:
                    data = b""
                if not data:
                    closed_at = time.monotonic()
                    break
                read = asyncio.ensure_future(reader.read(65536))  # a 408: wait for the close
                continue
            try:
                line += 1
                writer.write(b"X-Drip-%d: b\r\n" % line)
                await writer.drain()
            except OSError:
                closed_at = time.monotonic()
                break
        read.cancel()
        writer.close()
        out.append(SlowConn(first, closed_at, time.monotonic()))
        if closed_at is None:
            return  # the run is over
        if not reconnect:
            await stop.wait()
            return


def slowloris_run(
    port: int,
    slow: int = 50,
    requests: int = 200,
    rate: float = 20.0,
    head_start: float = 2.0,
    timeout: float = 5.0,
    path: str = "/legit",
) -> tuple[list[Outcome], list[SlowConn]]:
    """`slow` slowloris connections (reopened when the server closes them) while `requests`
    legitimate GETs are sent open-loop at `rate` per second, starting `head_start` seconds
    after the first slow connection. Returns every GET's outcome and every slow connection."""

    async def main() -> tuple[list[Outcome], list[SlowConn]]:
        stop = asyncio.Event()
        conns: list[SlowConn] = []
        slots = [
            asyncio.ensure_future(_slow_slot(port, stop, conns, i / max(slow, 1), True))
            for i in range(slow)
        ]
        await asyncio.sleep(head_start)
        t0 = time.monotonic()
        gets = []
        for i in range(requests):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            gets.append(asyncio.ensure_future(_paced_get(port, path, timeout)))
        outcomes = list(await asyncio.gather(*gets))
        stop.set()
        await asyncio.gather(*slots)
        return outcomes, conns

    return asyncio.run(main())


def staggered_pair(
    first: Callable[[], T], second: Callable[[], T], stagger: float = 0.05
) -> tuple[T, T]:
    """Run first in a thread and, `stagger` seconds later, second here: with a first
    request that holds its worker (``?hold=S``), the second one goes to another worker."""
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(first()), daemon=True)
    thread.start()
    time.sleep(stagger)
    other = second()
    thread.join(30)
    if not box:
        raise RuntimeError("the first request of the pair did not finish")
    return box[0], other


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Calls:
    """The echo app's call log: one line ``<pid> <METHOD> <target>`` per app call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        try:
            return self.path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def mark(self) -> int:
        return len(self.lines())

    def since(self, mark: int) -> list[str]:
        return self.lines()[mark:]
