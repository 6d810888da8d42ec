"""Observability and control against a real server: the stats document (schema, transports,
formats), uwsgitop and ``muleteer top`` in a pseudo-terminal, exact counter deltas, clients
that never read, Prometheus ``/metrics``, every master FIFO command, chain reloads under
load, systemd notifications and the stats server's security rules.

Reference behaviour: uWSGI 2.0 (research/uwsgi-behaviour.md sections 8 and 9.6) and the
issue "Observability and control". The stats document's shape is specified by
``tests/data/stats-schema.json`` (JSON Schema draft 2020-12).
"""

from __future__ import annotations

import copy
import fcntl
import http.client
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import app_path, read_all
from loadclient import BackgroundLoad
from muleteer import top
from muleteer.pytest_plugin import ServerFactory, ServerProcess, free_port, wait_for

pytestmark = pytest.mark.integration

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "data" / "stats-schema.json"
OBS_APP = app_path("obs/obsapp.py")
SLEEPER = app_path("obs/sleeper.py")
TESTAPP = app_path("testapp.py")


# -- JSON Schema ------------------------------------------------------------------------------
#
# jsonschema is used when it is installed; otherwise a small checker of the draft 2020-12
# keywords the schema uses. It refuses a keyword it does not know rather than ignore it.

_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description"}
_KEYWORDS = {
    "$ref",
    "type",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "pattern",
    "minItems",
    "maxItems",
    "items",
    "required",
    "properties",
    "additionalProperties",
    "minProperties",
    "maxProperties",
}


def _is_type(value: Any, name: str) -> bool:
    checks: dict[str, Callable[[Any], bool]] = {
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    return checks[name](value)


def _mini_errors(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str) -> list[str]:
    unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
    if unknown:
        raise NotImplementedError(f"schema keyword(s) {sorted(unknown)} at {at} not supported")
    errors: list[str] = []
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        errors += _mini_errors(value, target, root, at)
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_is_type(value, name) for name in types):
            return [*errors, f"{at}: {value!r} is not of type {types}"]
    if "enum" in schema and not any(
        value == option and type(value) is type(option) for option in schema["enum"]
    ):
        errors.append(f"{at}: {value!r} is not one of {schema['enum']}")
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{at}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{at}: {value} > maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{at}: {value} <= exclusiveMinimum {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{at}: {value} >= exclusiveMaximum {schema['exclusiveMaximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{at}: {value!r} is shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{at}: {value!r} does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{at}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{at}: more than {schema['maxItems']} items")
        if "items" in schema:
            for index, item in enumerate(value):
                errors += _mini_errors(item, schema["items"], root, f"{at}[{index}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{at}: {key!r} is a required property")
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{at}: fewer than {schema['minProperties']} properties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{at}: more than {schema['maxProperties']} properties")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                errors += _mini_errors(item, properties[key], root, f"{at}.{key}")
            elif extra is False:
                errors.append(f"{at}: additional property {key!r} is not allowed")
            elif isinstance(extra, dict):
                errors += _mini_errors(item, extra, root, f"{at}.{key}")
    return errors


def schema_errors(document: Any) -> list[str]:
    """Every violation of tests/data/stats-schema.json in `document` ([] when valid)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        return _mini_errors(document, schema, schema, "$")
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    return [
        f"${''.join(f'[{p}]' for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(document)
    ]


# -- stats clients ----------------------------------------------------------------------------


def _connect(address: str, timeout: float) -> socket.socket:
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def stats_raw(address: str, timeout: float = 5.0) -> bytes:
    """The bytes a raw stats client gets: everything until the server closes."""
    with _connect(address, timeout) as sock:
        return read_all(sock, timeout)


def stats_json(address: str, timeout: float = 5.0) -> dict[str, Any]:
    document = json.loads(stats_raw(address, timeout))
    assert isinstance(document, dict)
    return document


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def by_id(items: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {item["id"]: item for item in items}


def signal_entry(document: dict[str, Any], num: int) -> dict[str, Any]:
    (entry,) = [s for s in document["signals"] if s["num"] == num]
    return entry


def queue_entry(document: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [q for q in document["queues"] if q["name"] == name]
    return entry


# -- servers ----------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds 107 bytes; tmp_path can be long)."""
    path = Path(tempfile.mkdtemp(prefix="mlt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def slot_pids(server: ServerProcess, kind: str, count: int, timeout: float = 10.0) -> list[int]:
    """Wait until exactly `count` processes of `kind` run, one per slot; pids by slot."""

    def ready() -> list[int]:
        pids = [server.pids(f"{kind} {n}") for n in range(1, count + 1)]
        if all(len(p) == 1 for p in pids) and len(server.pids(kind)) == count:
            return [p[0] for p in pids]
        return []

    return list(wait_for(ready, timeout, what=f"{count} {kind}(s)"))


def replaced_pids(
    server: ServerProcess, kind: str, old: list[int], timeout: float = 15.0
) -> list[int]:
    """Wait until every slot of `kind` runs a process that is not in `old`."""

    def ready() -> list[int]:
        pids = [server.pids(f"{kind} {n}") for n in range(1, len(old) + 1)]
        if all(len(p) == 1 for p in pids) and len(server.pids(kind)) == len(old):
            flat = [p[0] for p in pids]
            return flat if not set(flat) & set(old) else []
        return []

    return list(wait_for(ready, timeout, what=f"every {kind} replaced (old: {old})"))


def start_obs(
    muleteer_server: ServerFactory,
    watch: Path,
    *options: str,
    stats: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[ServerProcess, str]:
    """The observability app: 2 workers, a signal-only mule 1, a programmed mule 2 that
    never reads its queue, farm f = mules 1 and 2, a timer, an rb_timer, a cron, a file
    monitor on `watch` and signals. Returns the server and its stats address once the
    stats report every process."""
    watch.mkdir(exist_ok=True)
    address = stats or f"127.0.0.1:{free_port()}"
    server = muleteer_server(
        "--processes",
        "2",
        "--mule",
        f"--mule={SLEEPER}",
        "--farm",
        "f:1,2",
        "--stats",
        address,
        *options,
        app=OBS_APP,
        env={"OBS_WATCH": str(watch), **(env or {})},
    )
    workers = slot_pids(server, "worker", 2)
    mules = slot_pids(server, "mule", 2)
    if "--stats-http" not in options:

        def reported() -> bool:
            document = stats_json(address)
            return [w["pid"] for w in document["workers"]] == workers and [
                m["pid"] for m in document["mules"]
            ] == mules

        wait_for(reported, 10.0, what="the stats to report every process")
    return server, address


def count_lines(server: ServerProcess, pattern: str) -> int:
    regex = re.compile(pattern)
    return sum(1 for line in server.log_text().splitlines() if regex.search(line))


def proc_age(pid: int) -> float:
    try:
        return time.time() - psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


# -- 1. the stats document --------------------------------------------------------------------


@pytest.mark.parametrize("minified", [False, True], ids=["pretty", "minified"])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_stats_document_matches_the_schema(
    muleteer_server: ServerFactory,
    tmp_path: Path,
    short_dir: Path,
    transport: str,
    minified: bool,
) -> None:
    address = f"127.0.0.1:{free_port()}" if transport == "tcp" else str(short_dir / "stats.sock")
    watch = tmp_path / "watch"
    server, address = start_obs(
        muleteer_server,
        watch,
        *(["--stats-minified"] if minified else []),
        stats=address,
    )
    assert server.get("/raise?num=30&k=2").status == 200
    assert json.loads(server.get("/msg?mule=1&m=3").body) == {"true": 3, "false": 0}

    def settled() -> dict[str, Any] | None:
        document = stats_json(address)
        mule1 = by_id(document["mules"])[1]
        ready = (
            document["timers"][0]["fired"] >= 1
            and mule1["signals"] == 2
            and mule1["messages_received"] == 3
        )
        return document if ready else None

    wait_for(settled, 10.0, what="timer, signals and messages in the stats")
    raw = stats_raw(address)
    document = json.loads(raw)

    assert schema_errors(document) == []

    # The format: minified is compact JSON; pretty is uWSGI's tabs and newlines.
    if minified:
        assert raw == json.dumps(document, separators=(",", ":")).encode()
    else:
        lines = raw.decode().splitlines()
        assert len(lines) > 100
        indents = {line[: len(line) - len(line.lstrip())] for line in lines}
        assert all(set(indent) <= {"\t"} for indent in indents), indents
        assert "\t\t" in indents

    # It describes this server.
    assert document["pid"] == server.pid
    assert document["cwd"] == str(tmp_path)
    assert [s["name"] for s in document["sockets"]] == [f"127.0.0.1:{server.port}"]
    workers, mules = by_id(document["workers"]), by_id(document["mules"])
    assert [w["accepting"] for w in workers.values()] == [1, 1]
    assert [w["respawn_count"] for w in workers.values()] == [1, 1]
    assert {i: w["pid"] for i, w in workers.items()} == {
        1: server.pids("worker 1")[0],
        2: server.pids("worker 2")[0],
    }
    assert {i: m["pid"] for i, m in mules.items()} == {
        1: server.pids("mule 1")[0],
        2: server.pids("mule 2")[0],
    }
    assert mules[1]["program"] is None and mules[2]["program"] == SLEEPER
    assert mules[1]["farms"] == mules[2]["farms"] == ["f"]
    assert [(f["name"], f["mules"]) for f in document["farms"]] == [("f", [1, 2])]
    assert [q["name"] for q in document["queues"]] == ["shared", "mule 1", "mule 2", "farm f"]
    targets = {s["num"]: s["target"] for s in document["signals"]}
    assert targets == {
        30: "mule1",
        31: "farm_f",
        40: "worker",
        41: "worker",
        42: "workers",
        43: "worker",
    }
    assert signal_entry(document, 30)["raised"] == signal_entry(document, 30)["delivered"] == 2
    now = time.time()
    (timer,) = document["timers"]
    assert (timer["signum"], timer["interval"]) == (40, 1.0)
    assert now - 1 < timer["next_due"] <= now + 2
    (rb_timer,) = document["rb_timers"]
    assert (rb_timer["signum"], rb_timer["interval"]) == (43, 3600.0)
    assert now + 3500 < rb_timer["next_due"] <= now + 3601
    (cron,) = document["crons"]
    assert (cron["signum"], cron["minute"], cron["hour"]) == (41, -1, -1)
    assert now - 1 < cron["next_due"] <= now + 61 and cron["next_due"] % 60 == 0
    assert document["file_monitors"] == [{"signum": 42, "path": str(watch), "fired": 0}]
    if transport == "unix":
        mode = os.stat(address).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

    # The schema can fail: a document with a missing key, a bad value and an extra key.
    broken = copy.deepcopy(document)
    del broken["workers"][0]["pid"]
    broken["mules"][0]["status"] = "asleep"
    broken["environ"] = {"HOME": "/root"}
    errors = schema_errors(broken)
    assert len(errors) == 3, errors


# -- 2. uwsgitop ------------------------------------------------------------------------------

_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b.")


class PtyProgram:
    """A program whose stdin, stdout and stderr are a pseudo-terminal of 50x160."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.fd, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self.output = bytearray()

    @property
    def text(self) -> str:
        """The output with terminal control sequences replaced by spaces."""
        return _ESCAPES.sub(b" ", bytes(self.output)).decode("utf-8", "replace")

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the program is gone and the terminal closed
            return False
        self.output += data
        return bool(data)

    def read_until(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not predicate(self.text):
            if time.monotonic() >= deadline or not self._read(0.05):
                raise AssertionError(f"screen never matched; it shows:\n{self.text[-3000:]}")
        return self.text

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.05)
        while self._read(0.0) and len(self.output) < 10_000_000:
            pass  # whatever it wrote while ending
        return self.proc.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.fd)


def pty_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")}
    env.update(TERM="xterm", **extra)
    return env


_PIP_UNREACHABLE = (
    "No matching distribution found",
    "Could not find a version",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
    "ProxyError",
    "Connection refused",
    "Read timed out",
)


def install_uwsgitop(target: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--no-input",
        "--disable-pip-version-check",
        "--retries",
        "1",
        "--timeout",
        "10",
        "uwsgitop",
    ]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.skip("pip could not install uwsgitop from the package index within 90 s")
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if any(marker in output for marker in _PIP_UNREACHABLE):
            last = output.strip().splitlines()[-1] if output.strip() else ""
            pytest.skip(f"pip cannot reach the package index to install uwsgitop: {last}")
        pytest.fail(f"pip install uwsgitop failed:\n{output}")
    script = target / "bin" / "uwsgitop"
    assert script.is_file(), output
    return script


def test_real_uwsgitop_renders_muleteer_stats(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    script = install_uwsgitop(tmp_path / "uwsgitop")
    server, address = start_obs(muleteer_server, tmp_path / "watch")
    for _ in range(3):
        assert server.get("/").status == 200
    workers = [w["pid"] for w in stats_json(address)["workers"]]
    program = PtyProgram(
        [sys.executable, str(script), address],
        pty_env(PYTHONPATH=str(tmp_path / "uwsgitop")),
    )
    try:
        screen = program.read_until(
            lambda text: all(re.search(rf"\b{pid}\b", text) for pid in workers), 10.0
        )
        assert "WID" in screen and f"masterpid: {server.pid}" in screen
        assert re.search(r"uwsgi-2\.0\.\d+-muleteer-\S+ - .* - req: 3 - RPS", screen)
        program.send(b"q")
        code = program.wait(5.0)
    finally:
        program.close()
    assert "Traceback" not in program.text, program.text[-3000:]
    assert "unable to get uWSGI statistics" not in program.text
    assert code == 0


# -- 3. counters move with exact deltas -------------------------------------------------------


def test_counters_move_with_exact_deltas(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    server, address = start_obs(muleteer_server, tmp_path / "watch")

    def requests(document: dict[str, Any]) -> int:
        return sum(w["requests"] for w in document["workers"])

    # N requests: the workers' requests grow by exactly N.
    before = stats_json(address)
    n = 25
    for _ in range(n):
        assert server.get("/").status == 200
    wait_for(lambda: requests(stats_json(address)) >= requests(before) + n, 5.0)
    after = stats_json(address)
    assert requests(after) == requests(before) + n
    assert sum(w["requests"] - w["delta_requests"] for w in after["workers"]) == 0

    # K raises of a signal routed to mule 1: raised, delivered and the mule's signals +K.
    before = stats_json(address)
    k = 7
    assert json.loads(server.get(f"/raise?num=30&k={k}").body) == {"raised": k}
    mule_signals = by_id(before["mules"])[1]["signals"]
    wait_for(lambda: by_id(stats_json(address)["mules"])[1]["signals"] >= mule_signals + k, 5.0)
    after = stats_json(address)
    old, new = signal_entry(before, 30), signal_entry(after, 30)
    assert new["raised"] == old["raised"] + k
    assert new["delivered"] == old["delivered"] + k
    assert (new["held"], new["dropped"]) == (0, 0)
    assert by_id(after["mules"])[1]["signals"] == mule_signals + k
    assert by_id(after["mules"])[2]["signals"] == by_id(before["mules"])[2]["signals"]

    # M messages to mule 1: its messages_received and its queue's sent/received +M.
    before = stats_json(address)
    m = 9
    assert json.loads(server.get(f"/msg?mule=1&m={m}").body) == {"true": m, "false": 0}
    received = by_id(before["mules"])[1]["messages_received"]
    wait_for(
        lambda: by_id(stats_json(address)["mules"])[1]["messages_received"] >= received + m,
        5.0,
    )
    after = stats_json(address)
    assert by_id(after["mules"])[1]["messages_received"] == received + m
    old_q, new_q = queue_entry(before, "mule 1"), queue_entry(after, "mule 1")
    assert new_q["sent"] == old_q["sent"] + m
    assert new_q["received"] == old_q["received"] + m
    assert (new_q["rejected"], new_q["depth"]) == (0, 0)

    # A full queue: mule 2 never reads; every False return is one rejection.
    before = stats_json(address)
    sent = json.loads(server.get("/msg?mule=2&m=400&size=4000").body)
    assert sent["false"] > 0 and sent["true"] > 0, sent
    after = stats_json(address)
    mule2 = by_id(after["mules"])[2]
    assert mule2["messages_rejected"] == sent["false"]
    assert mule2["queue"] == sent["true"]
    assert mule2["messages_received"] == 0
    q2 = queue_entry(after, "mule 2")
    assert (q2["sent"], q2["received"], q2["rejected"], q2["depth"]) == (
        sent["true"],
        0,
        sent["false"],
        sent["true"],
    )
    assert by_id(before["mules"])[2]["messages_rejected"] == 0
    server.wait_log(r"MULE MSG QUEUE IS FULL: a 4000-byte message to mule 2 was refused", 5.0)


def test_listen_queue_counts_waiting_connections(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    """uwsgitop's "lq": connections the kernel accepted that no worker took yet."""
    stats = f"127.0.0.1:{free_port()}"
    (tmp_path / "watch").mkdir()
    server = muleteer_server(
        "--processes",
        "1",
        "--stats",
        stats,
        app=OBS_APP,
        env={"OBS_WATCH": str(tmp_path / "watch")},
    )
    release = tmp_path / "release"
    waiting: list[socket.socket] = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as busy:
        busy.sendall(
            f"GET /hold?until={release} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        wait_for(lambda: stats_json(stats)["workers"][0]["status"] == "busy", 5.0)
        try:
            for _ in range(3):
                # Each sends its request at once: with TCP_DEFER_ACCEPT a connection that
                # has said nothing yet is not in the accept queue at all.
                conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                waiting.append(conn)
            document = wait_for(lambda: (d := stats_json(stats))["listen_queue"] == 3 and d, 5.0)
            (sock,) = document["sockets"]
            assert (sock["queue"], sock["max_queue"]) == (3, 100)
            assert document["load"] == 3
            release.write_text("")
            assert read_all(busy).startswith(b"HTTP/1.1 200")
            for conn in waiting:
                assert read_all(conn).startswith(b"HTTP/1.1 200")
        finally:
            for conn in waiting:
                conn.close()
    assert stats_json(stats)["listen_queue"] == 0


# -- 4. clients that never read ---------------------------------------------------------------


def established_on(pid: int, port: int) -> int:
    """Connections process `pid` holds open on local port `port`."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(
        1 for c in conns if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


@pytest.mark.parametrize("mode", ["raw", "http"])
def test_clients_that_never_read_do_not_stall_the_master(
    muleteer_server: ServerFactory, tmp_path: Path, mode: str
) -> None:
    """20 clients connect to the stats socket and never read (with --stats-http they never
    send their request either, so the master has to hold them)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    (tmp_path / "watch").mkdir()
    server = muleteer_server(
        "--processes",
        "1",
        "--stats",
        address,
        *(["--stats-http"] if mode == "http" else []),
        app=OBS_APP,
        env={"OBS_WATCH": str(tmp_path / "watch")},
    )
    (victim,) = slot_pids(server, "worker", 1)
    # A death soon after start counts as a boot failure (respawn back-off).
    wait_for(lambda: proc_age(victim) >= 1.2, 5.0, what="victim age")

    def fetch_once() -> bytes:
        if mode == "raw":
            return stats_raw(address, timeout=2.0)
        try:
            status, _, body = http_get(port, "/", timeout=2.0)
        except (OSError, http.client.HTTPException):
            return b""
        return body if status == 200 else b""

    def taken(batch: list[socket.socket]) -> bool:
        """The master accepted every socket of `batch`: it holds it, or it already wrote
        to it or closed it (seen without reading)."""
        try:
            conns = psutil.Process(server.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        held = {c.raddr.port for c in conns if c.raddr}
        return all(
            sock.getsockname()[1] in held or select.select([sock], [], [], 0)[0] for sock in batch
        )

    idle: list[socket.socket] = []
    try:
        # In batches of 8, each accepted before the next: a burst larger than the listen
        # backlog (16) would have its last SYNs dropped and retried only after 1 s.
        for _ in range(0, 20, 8):
            batch = []
            for _ in range(min(8, 20 - len(idle))):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
                sock.settimeout(5.0)
                sock.connect(("127.0.0.1", port))
                batch.append(sock)
            idle += batch
            wait_for(lambda batch=batch: taken(batch), 1.0, what="the master to accept")
        opened = time.monotonic()
        held = established_on(server.pid, port)

        # A worker SIGKILLed meanwhile is replaced, and the replacement answers, within 1 s.
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def replacement() -> str | None:
            try:
                response = server.get("/", timeout=1.0)
            except (OSError, http.client.HTTPException):
                return None
            pid = response.headers.get("X-Pid")
            return pid if response.status == 200 and pid != str(victim) else None

        new_pid = wait_for(replacement, 3.0, interval=0.005, what="the replacement worker")
        respawn = time.monotonic() - killed
        assert server.pids("worker 1") == [int(new_pid)]
        # The stats clients are the master's business: the new worker holds none of them.
        inherited = [
            c.raddr.port
            for c in psutil.Process(int(new_pid)).net_connections(kind="tcp")
            if c.laddr and c.laddr.port == port and c.raddr
        ]

        # A fresh client gets the whole document within 1 s (retrying when it is turned
        # away, as uwsgitop does every second).
        asked = time.monotonic()
        attempts: list[int] = []

        def fresh() -> dict[str, Any] | None:
            raw = fetch_once()
            attempts.append(len(raw))
            try:
                return dict(json.loads(raw))
            except ValueError:
                return None

        document = wait_for(fresh, 3.0, interval=0.005, what="a fresh client's document")
        answered = time.monotonic() - asked
        assert by_id(document["workers"])[1]["pid"] == int(new_pid)

        # The idle clients are dropped after about a second at most: the master lets go of
        # them and each client sees its connection end.
        wait_for(lambda: established_on(server.pid, port) == 0, 3.0, what="the master to let go")
        released = time.monotonic() - opened

        def ended(sock: socket.socket) -> bool:
            if mode == "http":  # nothing is ever sent: readable means closed
                return bool(select.select([sock], [], [], 0)[0])
            try:  # the document, then the end
                sock.settimeout(0.01)
                while sock.recv(1 << 20):
                    pass
            except (TimeoutError, BlockingIOError):
                return False
            except ConnectionResetError:
                pass
            return True

        deadline = opened + 3.0
        while not all(ended(sock) for sock in idle) and time.monotonic() < deadline:
            time.sleep(0.01)
        dropped = time.monotonic() - opened
        still_open = [sock.getsockname()[1] for sock in idle if not ended(sock)]
        holders = {
            child.pid: child.name()
            for child in psutil.Process(server.pid).children()
            for c in child.net_connections(kind="tcp")
            if c.raddr and c.raddr.port in still_open
        }
    finally:
        for sock in idle:
            sock.close()
    print(
        f"{mode}: {held} held by the master; respawn answered in {respawn * 1000:.0f} ms; "
        f"fresh client answered in {answered * 1000:.0f} ms after {len(attempts)} "
        f"attempt(s); master let go after {released * 1000:.0f} ms; every idle client "
        f"closed after {dropped * 1000:.0f} ms; still open: {still_open}"
    )
    assert respawn < 1.0
    assert answered < 1.0
    if mode == "http":
        # The master holds as many as it serves at once (16) and closes the others; never
        # asked, they are never answered: let go at the 1 s deadline, with nothing sent.
        assert held == 16
        assert 0.8 <= released <= 1.5
    else:
        # The document went into the kernel's buffers at once: the master holds nothing,
        # and every client that finally reads gets all of it, then the end.
        assert held == 0
    # A respawned worker must not inherit the master's stats client connections, and
    # every idle client sees its connection end within about a second.
    assert inherited == [], f"the new worker {new_pid} holds stats clients {inherited}"
    assert still_open == [], f"idle stats clients never closed, held by {holders}"
    assert dropped <= 1.5
    assert server.proc is not None and server.proc.poll() is None


# -- 5. Prometheus /metrics -------------------------------------------------------------------


def test_metrics_match_the_json(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    port = free_port()
    server, _ = start_obs(
        muleteer_server, tmp_path / "watch", "--stats-http", stats=f"127.0.0.1:{port}"
    )
    for _ in range(12):
        assert server.get("/").status == 200
    assert json.loads(server.get("/msg?mule=1&m=5").body) == {"true": 5, "false": 0}
    assert server.get("/raise?num=30&k=4").status == 200

    def document() -> dict[str, Any]:
        status, headers, body = http_get(port, "/")
        assert status == 200 and headers["Content-Type"] == "application/json"
        data = json.loads(body)
        assert isinstance(data, dict)
        return data

    def settled() -> dict[str, Any] | None:
        data = document()
        mule1 = by_id(data["mules"])[1]
        done = (
            sum(w["requests"] for w in data["workers"]) == 14
            and mule1["messages_received"] == 5
            and mule1["signals"] == 4
        )
        return data if done else None

    stats = wait_for(settled, 5.0, what="the counters to settle")
    status, headers, body = http_get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    def samples(family: str, sample: str) -> dict[tuple[tuple[str, str], ...], float]:
        assert family in families, sorted(families)
        return {
            tuple(sorted(s.labels.items())): s.value
            for s in families[family].samples
            if s.name == sample
        }

    assert families["muleteer_requests"].type == "counter"
    requests = samples("muleteer_requests", "muleteer_requests_total")
    assert requests == {(("worker", str(w["id"])),): float(w["requests"]) for w in stats["workers"]}
    assert sum(requests.values()) == 14
    received = samples("muleteer_mule_messages_received", "muleteer_mule_messages_received_total")
    assert received[(("mule", "1"),)] == 5.0
    assert received == {
        (("mule", str(m["id"])),): float(m["messages_received"]) for m in stats["mules"]
    }
    raised = samples("muleteer_signals_raised", "muleteer_signals_raised_total")
    assert raised[(("signum", "30"),)] == float(signal_entry(stats, 30)["raised"]) == 4.0
    sent = samples("muleteer_queue_messages_sent", "muleteer_queue_messages_sent_total")
    assert sent[(("queue", "mule 1"),)] == float(queue_entry(stats, "mule 1")["sent"]) == 5.0
    mule_signals = samples("muleteer_mule_signals", "muleteer_mule_signals_total")
    assert mule_signals[(("mule", "1"),)] == 4.0
    # muleteer top reads the same document over HTTP.
    again = top.fetch(f"http://127.0.0.1:{port}")
    assert [(w["id"], w["pid"], w["requests"]) for w in again["workers"]] == [
        (w["id"], w["pid"], w["requests"]) for w in stats["workers"]
    ]


# -- 6. the master FIFO -----------------------------------------------------------------------


def fifo_send(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def start_fifo_server(
    muleteer_server: ServerFactory, tmp_path: Path, *options: str
) -> tuple[ServerProcess, Path, list[int], list[int]]:
    fifo = tmp_path / "master.fifo"
    server = muleteer_server(
        "--processes", "2", "--mules", "2", "--master-fifo", str(fifo), *options, app=TESTAPP
    )
    return server, fifo, slot_pids(server, "worker", 2), slot_pids(server, "mule", 2)


@pytest.mark.parametrize("command", ["r", "R"])
def test_fifo_reload_replaces_every_process_in_the_same_master(
    muleteer_server: ServerFactory, tmp_path: Path, command: str
) -> None:
    server, fifo, workers, mules = start_fifo_server(muleteer_server, tmp_path)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o600
    fifo_send(fifo, command.encode())
    server.wait_log(r"binary reloading muleteer", 10.0)
    new_workers = replaced_pids(server, "worker", workers)
    new_mules = replaced_pids(server, "mule", mules)
    assert server.proc is not None and server.proc.poll() is None
    assert count_lines(server, rf"\[master {server.pid}\] binary reloading muleteer") == 1
    how = "gracefully" if command == "r" else "brutally"
    assert count_lines(server, rf"\.\.\.{how} killing workers\.\.\.") == 1
    assert json.loads(server.get("/").body)["pid"] in new_workers
    assert len(set(new_mules)) == 2
    # The new master made the FIFO again, still 0600, and it obeys.
    wait_for(lambda: fifo.exists(), 5.0, what="the FIFO again")
    assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o600
    fifo_send(fifo, b"s")
    server.wait_log(rf"\] worker 1 pid={new_workers[0]} state=running", 5.0)


@pytest.mark.parametrize("command", ["w", "W"])
def test_fifo_workers_reload_keeps_the_mules_and_the_master(
    muleteer_server: ServerFactory, tmp_path: Path, command: str
) -> None:
    server, fifo, workers, mules = start_fifo_server(muleteer_server, tmp_path)
    fifo_send(fifo, command.encode())
    new_workers = replaced_pids(server, "worker", workers)
    assert slot_pids(server, "mule", 2) == mules
    how = "brutal" if command == "W" else "graceful"
    server.wait_log(rf"master fifo: {how} reload of the workers", 5.0)
    assert count_lines(server, r"binary reloading") == 0
    assert json.loads(server.get("/").body)["pid"] in new_workers
    assert slot_pids(server, "mule", 2) == mules


def test_fifo_chain_reload_replaces_workers_one_at_a_time(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, fifo, workers, mules = start_fifo_server(muleteer_server, tmp_path)
    fifo_send(fifo, b"c")
    server.wait_log(r"chain reload complete", 15.0)
    new = replaced_pids(server, "worker", workers, timeout=5.0)
    lines = server.log_text().splitlines()

    def at(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert len(found) == 1, (pattern, found)
        return found[0]

    order = [
        at(rf"chain reload: worker 1 \(pid: {workers[0]}\) asked to stop"),
        at(rf"spawned muleteer worker 1 \(pid: {new[0]},"),
        at(rf"chain reload: worker 2 \(pid: {workers[1]}\) asked to stop"),
        at(rf"spawned muleteer worker 2 \(pid: {new[1]},"),
        at(r"chain reload complete"),
    ]
    assert order == sorted(order), order
    assert slot_pids(server, "mule", 2) == mules
    assert count_lines(server, r"binary reloading") == 0


def test_fifo_mules_reload_keeps_the_workers(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, fifo, workers, mules = start_fifo_server(muleteer_server, tmp_path)
    fifo_send(fifo, b"m")
    replaced_pids(server, "mule", mules)
    assert slot_pids(server, "worker", 2) == workers
    assert count_lines(server, r"binary reloading") == 0


def test_fifo_stats_pidfile_and_unknown_letters(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "master.pid"
    server, fifo, workers, mules = start_fifo_server(
        muleteer_server, tmp_path, "--pidfile", str(pidfile)
    )
    assert pidfile.read_text() == f"{server.pid}\n"
    pidfile.unlink()
    # Unknown letters are logged and ignored; "s" after them proves they were processed.
    fifo_send(fifo, b"xZ\n")
    fifo_send(fifo, b"s")
    server.wait_log(r"master fifo: unknown command 'x' ignored", 5.0)
    server.wait_log(r"master fifo: unknown command 'Z' ignored", 5.0)
    names = [f"worker {i}" for i in (1, 2)] + [f"mule {i}" for i in (1, 2)]
    for name, pid in zip(names, workers + mules, strict=True):
        server.wait_log(rf"\] {name} pid={pid} state=running requests=\d+ signals=\d+", 5.0)
    assert slot_pids(server, "worker", 2) == workers
    assert slot_pids(server, "mule", 2) == mules
    assert count_lines(server, r"reload|killing workers") == 0
    # "P" writes the pidfile again.
    fifo_send(fifo, b"P")
    wait_for(lambda: pidfile.exists() and pidfile.read_text() == f"{server.pid}\n", 5.0)


def start_logto_server(
    muleteer_server: ServerFactory, tmp_path: Path
) -> tuple[ServerProcess, Path, Path]:
    log, fifo = tmp_path / "server.log", tmp_path / "master.fifo"
    server = muleteer_server(
        "--processes",
        "1",
        "--logto",
        str(log),
        "--master-fifo",
        str(fifo),
        app=TESTAPP,
        ready=False,
    )

    def up() -> bool:
        if not (log.exists() and "spawned muleteer worker 1" in log.read_text()):
            return False
        try:
            socket.create_connection(("127.0.0.1", server.port or 0), timeout=0.5).close()
        except OSError:
            return False
        return True

    wait_for(up, 20.0, what="the server to log to --logto and listen")
    return server, log, fifo


def rotate_and_reopen(log: Path, fifo: Path) -> Path:
    """What logrotate does: move the file away, then ask the master to reopen (``l``)."""
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    fifo_send(fifo, b"l")
    wait_for(log.exists, 5.0, what="the log file reopened")
    return rotated


def test_fifo_l_reopens_the_master_log(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    server, log, fifo = start_logto_server(muleteer_server, tmp_path)
    (worker,) = slot_pids(server, "worker", 1)
    rotated = rotate_and_reopen(log, fifo)
    fifo_send(fifo, b"s")
    wait_for(lambda: f"worker 1 pid={worker} state=running" in log.read_text(), 5.0)
    assert "state=running" not in rotated.read_text()
    assert "master fifo: 'l' (reopen the log file)" in rotated.read_text()


def test_fifo_l_reopened_log_gets_the_workers_lines_too(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    """After a rotation every process logs to the new file: a worker's request line that
    still goes to the rotated file is lost once logrotate compresses or deletes it."""
    server, log, fifo = start_logto_server(muleteer_server, tmp_path)
    rotated = rotate_and_reopen(log, fifo)
    assert server.get("/after-rotation").status == 200
    try:
        wait_for(lambda: "GET /after-rotation" in log.read_text(), 3.0)
    except TimeoutError:
        where = "the rotated file" if "GET /after-rotation" in rotated.read_text() else "nowhere"
        pytest.fail(f"after 'l' the worker's request line went to {where}, not to {log}")


def test_fifo_q_is_a_graceful_shutdown_with_status_0(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, fifo, workers, mules = start_fifo_server(muleteer_server, tmp_path)
    fifo_send(fifo, b"q")
    assert server.wait_exit(15.0) == 0
    server.wait_log(r"graceful shutdown", 1.0)
    server.wait_log(r"goodbye to muleteer", 1.0)
    assert not fifo.exists()
    assert all(not psutil.pid_exists(pid) for pid in workers + mules)


def test_fifo_symlink_refused_at_start_up(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    fifo = tmp_path / "master.fifo"
    fifo.symlink_to(victim)
    server = muleteer_server(
        "--processes", "1", "--master-fifo", str(fifo), app=TESTAPP, ready=False
    )
    assert server.wait_exit(20.0) == 1
    lines = [line for line in server.log_text().splitlines() if "master-fifo" in line]
    assert len(lines) == 1, server.log_text()
    assert re.search(r"option 'master-fifo': .*master\.fifo.* not a FIFO .*symlink", lines[0])
    assert count_lines(server, r"spawned muleteer") == 0
    assert fifo.is_symlink() and victim.read_text() == "precious\n"


# -- 7. chain reload under load ---------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["fifo", "touch"])
def test_chain_reload_under_load_fails_no_request(
    muleteer_server: ServerFactory, tmp_path: Path, trigger: str
) -> None:
    fifo, touch = tmp_path / "master.fifo", tmp_path / "chain.touch"
    touch.write_text("")
    stats = f"127.0.0.1:{free_port()}"
    server = muleteer_server(
        "--processes",
        "2",
        "--stats",
        stats,
        "--master-fifo",
        str(fifo),
        "--touch-chain-reload",
        str(touch),
        app=TESTAPP,
    )
    old = slot_pids(server, "worker", 2)

    def served() -> int:
        return sum(w["requests"] for w in stats_json(stats)["workers"])

    with BackgroundLoad(server.port, duration=6.0, concurrency=4, keepalive=False) as load:
        wait_for(lambda: served() >= 50, 5.0, what="the load to run")
        triggered = time.monotonic()
        if trigger == "fifo":
            fifo_send(fifo, b"c")
        else:
            mtime = touch.stat().st_mtime + 10
            os.utime(touch, (mtime, mtime))
        server.wait_log(r"chain reload complete", 10.0)
        done = time.monotonic()
        at_done = served()
        wait_for(lambda: served() >= at_done + 50, 5.0, what="load after the chain reload")
        result = load.join()
    new = replaced_pids(server, "worker", old, timeout=5.0)
    print(f"chain reload ({trigger}) under load: {len(result.outcomes)} requests")
    assert result.failed == [], result.errors()
    assert len(result.ok) >= 100
    before = [o for o in result.ok if o.end < triggered]
    after = [o for o in result.ok if o.start > done]
    assert before and after
    assert {json.loads(o.body)["pid"] for o in before} <= set(old)
    assert {json.loads(o.body)["pid"] for o in after} <= set(new)
    assert count_lines(server, r"binary reloading") == 0


# -- 7b. touch files --------------------------------------------------------------------------


def touch(path: Path) -> None:
    """A new mtime, clearly different from the one the master recorded."""
    mtime = path.stat().st_mtime + 10
    os.utime(path, (mtime, mtime))


@pytest.mark.parametrize("which", ["workers", "mules", "signal", "reload"])
def test_touch_files(muleteer_server: ServerFactory, tmp_path: Path, which: str) -> None:
    files = {name: tmp_path / f"{name}.touch" for name in ("workers", "mules", "signal", "reload")}
    for path in files.values():
        path.write_text("")
    server, address = start_obs(
        muleteer_server,
        tmp_path / "watch",
        "--touch-workers-reload",
        str(files["workers"]),
        "--touch-mules-reload",
        str(files["mules"]),
        "--touch-signal",
        f"{files['signal']} 30",
        "--touch-reload",
        str(files["reload"]),
    )
    workers, mules = slot_pids(server, "worker", 2), slot_pids(server, "mule", 2)
    for _ in range(3):
        assert server.get("/").status == 200
    before = wait_for(
        lambda: (d := stats_json(address)) and sum(w["requests"] for w in d["workers"]) == 3 and d,
        5.0,
    )
    touch(files[which])
    if which == "workers":
        new = replaced_pids(server, "worker", workers)
        server.wait_log(rf"{files['workers']} has been touched: graceful reload of the workers")
        assert slot_pids(server, "mule", 2) == mules
        after = wait_for(
            lambda: (d := stats_json(address)) and [w["pid"] for w in d["workers"]] == new and d,
            5.0,
        )
        # A new process in the same slot: counted as a respawn; the slot's requests go on
        # and the process's own count (delta_requests) starts again.
        assert [w["respawn_count"] for w in after["workers"]] == [2, 2]
        assert [m["respawn_count"] for m in after["mules"]] == [1, 1]
        assert [w["requests"] for w in after["workers"]] == [
            w["requests"] for w in before["workers"]
        ]
        assert [w["delta_requests"] for w in after["workers"]] == [0, 0]
    elif which == "mules":
        new = replaced_pids(server, "mule", mules)
        server.wait_log(rf"{files['mules']} has been touched: reloading every mule")
        assert slot_pids(server, "worker", 2) == workers
        after = wait_for(
            lambda: (d := stats_json(address)) and [m["pid"] for m in d["mules"]] == new and d,
            5.0,
        )
        assert [m["respawn_count"] for m in after["mules"]] == [2, 2]
        assert [w["respawn_count"] for w in after["workers"]] == [1, 1]
    elif which == "signal":
        signals = by_id(before["mules"])[1]["signals"]
        wait_for(
            lambda: by_id(stats_json(address)["mules"])[1]["signals"] == signals + 1,
            5.0,
            what="mule 1 to handle signal 30",
        )
        after = stats_json(address)
        assert signal_entry(after, 30)["raised"] == signal_entry(before, 30)["raised"] + 1
        assert slot_pids(server, "worker", 2) == workers
        assert slot_pids(server, "mule", 2) == mules
    else:
        server.wait_log(r"binary reloading muleteer", 10.0)
        replaced_pids(server, "worker", workers)
        replaced_pids(server, "mule", mules)
        assert stats_json(address)["pid"] == server.pid
    if which != "reload":
        assert count_lines(server, r"binary reloading") == 0


# -- 8. systemd notifications -----------------------------------------------------------------


class NotifySocket:
    """A fake systemd notification socket: collects every datagram the server sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), fields))
        return [m for _, m in self.messages]

    def wait(self, predicate: Callable[[list[dict[str, str]]], bool], timeout: float) -> None:
        def ok() -> bool:
            select.select([self.sock], [], [], 0.02)
            return predicate(self.drain())

        wait_for(ok, timeout, interval=0.0, what=f"notifications; got {self.drain()}")

    def close(self) -> None:
        self.sock.close()


def kinds(messages: list[dict[str, str]]) -> list[str]:
    """READY / RELOADING / STOPPING in arrival order (watchdog pings and STATUS left out)."""
    out = []
    for message in messages:
        out += [key for key in ("READY", "RELOADING", "STOPPING") if message.get(key) == "1"]
    return out


def test_systemd_ready_reloading_stopping(
    muleteer_server: ServerFactory, tmp_path: Path, short_dir: Path
) -> None:
    notify = NotifySocket(short_dir / "notify.sock")
    try:
        server = muleteer_server(
            "--processes",
            "2",
            "--mules",
            "1",
            app=TESTAPP,
            env={"NOTIFY_SOCKET": str(notify.path)},
        )
        notify.wait(lambda m: "READY" in kinds(m), 10.0)
        # READY=1 is sent only once every worker and mule is up.
        log = server.log_text()
        for name in ("worker 1", "worker 2", "mule 1"):
            assert f"spawned muleteer {name} " in log
        (ready,) = [m for m in notify.drain() if m.get("READY") == "1"]
        assert ready["MAINPID"] == str(server.pid)
        assert "2 worker(s) and 1 mule(s) up" in ready["STATUS"]
        assert kinds(notify.drain()) == ["READY"]
        workers = slot_pids(server, "worker", 2)

        server.send_signal(signal.SIGHUP)
        notify.wait(lambda m: kinds(m) == ["READY", "RELOADING", "READY"], 15.0)
        (reloading,) = [m for m in notify.drain() if m.get("RELOADING") == "1"]
        assert int(reloading["MONOTONIC_USEC"]) > 0
        replaced_pids(server, "worker", workers)
        assert server.stop() == 0
        notify.wait(lambda m: kinds(m) == ["READY", "RELOADING", "READY", "STOPPING"], 5.0)
        assert not any("WATCHDOG" in m for m in notify.drain())
    finally:
        notify.close()


def test_systemd_watchdog_pings(
    muleteer_server: ServerFactory, tmp_path: Path, short_dir: Path
) -> None:
    notify = NotifySocket(short_dir / "notify.sock")
    try:
        muleteer_server(
            "--processes",
            "1",
            app=TESTAPP,
            env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"},
        )
        notify.wait(lambda m: "READY" in kinds(m), 10.0)
        first = len(notify.messages)
        notify.wait(lambda m: len(m) >= first + 10, 5.0)
        pings = [t for t, m in notify.messages[first:] if m.get("WATCHDOG") == "1"]
    finally:
        notify.close()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    print(f"watchdog gaps (ms): {[round(g * 1000) for g in gaps]}")
    assert len(pings) >= 10
    # Every half WATCHDOG_USEC (100 ms); never near the 200 ms limit.
    assert max(gaps) < 0.2, gaps
    assert 0.05 < (pings[-1] - pings[0]) / len(gaps) < 0.15


# -- 9. muleteer top --------------------------------------------------------------------------


def test_muleteer_top_in_a_terminal(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    server, address = start_obs(muleteer_server, tmp_path / "watch")
    document = stats_json(address)
    pids = [w["pid"] for w in document["workers"]] + [m["pid"] for m in document["mules"]]
    program = PtyProgram([sys.executable, "-m", "muleteer", "top", address], pty_env())
    try:
        screen = program.read_until(
            lambda text: "MULE" in text and all(re.search(rf"\b{p}\b", text) for p in pids),
            10.0,
        )
        assert f"master pid {server.pid}" in screen
        assert re.search(r"\bmuleteer 2\.0\.\d+-muleteer-", screen)
        program.send(b"q")
        code = program.wait(5.0)
    finally:
        program.close()
    assert code == 0
    assert "Traceback" not in program.text


def test_muleteer_top_without_a_server_says_so() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    program = PtyProgram([sys.executable, "-m", "muleteer", "top", address], pty_env())
    try:
        program.read_until(lambda text: "q: quit" in text, 10.0)
        assert f"muleteer top: cannot read stats from {address}:" in program.text
        assert "Connection refused" in program.text
        program.send(b"q")
        code = program.wait(5.0)
    finally:
        program.close()
    assert code == 0
    assert "Traceback" not in program.text


def test_top_render_of_a_live_snapshot(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    server, address = start_obs(muleteer_server, tmp_path / "watch")
    for _ in range(4):
        assert server.get("/").status == 200
    assert server.get("/raise?num=30&k=3").status == 200
    wait_for(lambda: by_id(top.fetch(address)["mules"])[1]["signals"] == 3, 5.0)
    snapshot = top.fetch(address)
    lines = top.render(snapshot, None, 1.0)
    total = sum(w["requests"] for w in snapshot["workers"])
    assert total == 5
    assert lines[0] == (
        f"muleteer {snapshot['version']} - master pid {server.pid} - listen queue 0 - "
        f"requests {total} (0.0/s)"
    )
    rows = [line.split() for line in lines]
    for worker in snapshot["workers"]:
        assert [str(worker["id"]), str(worker["pid"]), str(worker["requests"])] in [
            row[:3] for row in rows
        ]
    mule_header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["MULE", "PID"])
    mules = by_id(snapshot["mules"])
    assert rows[mule_header + 1][:4] == ["1", str(mules[1]["pid"]), "idle", "3"]
    assert lines[mule_header + 1].endswith("signal-only / f")
    assert rows[mule_header + 2][:2] == ["2", str(mules[2]["pid"])]
    assert lines[mule_header + 2].endswith(f"{SLEEPER} / f")
    assert "FARMS: f=1,2 (queue 0)" in lines
    assert ["30", "mule1", "3", "3", "0", "0"] in rows
    assert lines[-1] == "timers: 2  crons: 1  file monitors: 1"
    # The rate is computed against the previous snapshot.
    later = copy.deepcopy(snapshot)
    later["workers"][0]["requests"] += 10
    again = top.render(later, snapshot, 2.0)
    assert again[0].endswith(f"requests {total + 10} (5.0/s)")
    worker_row = next(r for r in (line.split() for line in again) if r[:1] == ["1"])
    assert worker_row[3] == "5.0"


# -- 10. security -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["0.0.0.0:{port}", ":{port}", "[::]:{port}"])
def test_public_stats_address_is_refused_without_allow_public(
    muleteer_server: ServerFactory, form: str
) -> None:
    address = form.format(port=free_port())
    server = muleteer_server("--stats", address, app=TESTAPP, ready=False)
    assert server.wait_exit(20.0) == 1
    lines = [line for line in server.log_text().splitlines() if "stats" in line]
    assert len(lines) == 1, server.log_text()
    assert f"option 'stats': cannot serve on {address!r}" in lines[0]
    assert "not loopback" in lines[0] and "--stats-allow-public" in lines[0]
    assert count_lines(server, r"spawned muleteer") == 0


@pytest.mark.parametrize("problem", ["regular file", "socket in use", "bad port"])
def test_unusable_stats_address_is_one_clear_line(
    muleteer_server: ServerFactory, short_dir: Path, problem: str
) -> None:
    """Like every other start-up error: one line naming the option, no traceback, and
    whatever is at the path left alone."""
    path = short_dir / "stats.sock"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if problem == "regular file":
            path.write_text("precious\n")
            address, reason = str(path), "exists and is not a socket"
        elif problem == "socket in use":
            holder.bind(str(path))
            holder.listen(1)
            address, reason = str(path), "in use by another process"
        else:
            address, reason = "127.0.0.1:99999", "invalid port"
        server = muleteer_server("--stats", address, app=TESTAPP, ready=False)
        code = server.wait_exit(20.0)
        log = server.log_text()
        assert "Traceback" not in log, log
        assert code == 1
        lines = [line for line in log.splitlines() if "stats" in line]
        assert len(lines) == 1, log
        assert f"option 'stats': cannot serve on {address!r}" in lines[0]
        assert reason in lines[0]
        assert count_lines(server, r"spawned muleteer") == 0
        if problem == "regular file":
            assert path.read_text() == "precious\n"
        if problem == "socket in use":
            assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        holder.close()


def test_public_stats_address_with_allow_public(muleteer_server: ServerFactory) -> None:
    port = free_port()
    server = muleteer_server("--stats", f"0.0.0.0:{port}", "--stats-allow-public", app=TESTAPP)
    document = stats_json(f"127.0.0.1:{port}")
    assert document["pid"] == server.pid


def test_unix_stats_socket_is_private_and_no_secret_leaks(
    muleteer_server: ServerFactory, tmp_path: Path, short_dir: Path
) -> None:
    secret, request_secret = f"s3cr3t-{uuid.uuid4().hex}", f"req-{uuid.uuid4().hex}"
    address = str(short_dir / "stats.sock")
    server, _ = start_obs(
        muleteer_server, tmp_path / "watch", stats=address, env={"SECRET_TOKEN": secret}
    )
    mode = os.lstat(address).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    # The token really is in the server's environment.
    assert json.loads(server.get("/env?name=SECRET_TOKEN").body) == {"value": secret}
    # A request in flight carrying a secret (query and header) while the stats are read.
    release = tmp_path / "release"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"GET /hold?until={release}&token={request_secret} HTTP/1.1\r\nHost: x\r\n"
            f"X-Token: {request_secret}\r\nConnection: close\r\n\r\n".encode()
        )
        busy = wait_for(
            lambda: (
                (raw := stats_raw(address))
                and any(w["status"] == "busy" for w in json.loads(raw)["workers"])
                and raw
            ),
            5.0,
            what="a worker busy with the request",
        )
        release.write_text("")
        assert read_all(sock).startswith(b"HTTP/1.1 200")
    raw = busy + stats_raw(address)
    assert server.stop() == 0
    assert not os.path.exists(address)  # removed at shutdown
    assert secret.encode() not in raw
    assert b"SECRET_TOKEN" not in raw
    assert request_secret.encode() not in raw
    # The document read during the request is a valid one, showing the worker busy.
    assert schema_errors(json.loads(busy)) == []
    assert [c["in_request"] for w in json.loads(busy)["workers"] for c in w["cores"]].count(1) == 1
