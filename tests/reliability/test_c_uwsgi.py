"""Suite C (research/reliability.md 6.C): the uwsgi protocol on ``--socket``, over real
sockets.

C1 malformed packets (random bytes, every truncation offset of a valid packet, each
structural fault) are closed with at most one log line and never reach the app; C2 a body
that carries a packet is only a body; C3 uWSGI's magic variables are plain strings; C4
SERVER_PROTOCOL / REQUEST_METHOD injection; C5 real nginx ``uwsgi_pass`` under wrk; C6 the
TCP peer allow-list; C7 a differential against uWSGI 2.0.31 ``--socket`` on generated
packets.

Packets are built with the independent encoder of tests/helpers.py or by hand here; app
calls are counted with the echo app's call log (BCF_CALLS).
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from helpers import uwsgi_packet, uwsgi_vars
from muleteer.pytest_plugin import ServerProcess, wait_for
from nginx import Nginx, nginx_binary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "reliability"))
import bcf_support as bs

pytestmark = pytest.mark.integration

ServerFactory = Callable[..., ServerProcess]
Figure = Callable[..., None]


class LogCursor:
    """New server log lines since the last call, request-log lines left out."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.seen = len(server.log_text().splitlines())

    def new(self) -> list[str]:
        lines = self.server.log_text().splitlines()
        fresh, self.seen = lines[self.seen :], len(lines)
        return [line for line in fresh if "[pid: " not in line]


def uwsgi_server(
    muleteer_server: ServerFactory, tmp_path: Path, *options: str
) -> tuple[ServerProcess, bs.Calls]:
    calls = bs.Calls(tmp_path / "calls.txt")
    server = muleteer_server(
        "--processes",
        "2",
        *options,
        app=bs.ECHO_APP,
        protocol="uwsgi",
        env={"BCF_CALLS": str(calls.path)},
    )
    wait_for(lambda: len(server.pids("worker")) == 2, 10, what="2 workers")
    return server, calls


def send_raw(
    address: tuple[str, int] | str,
    data: bytes,
    half_close: bool = True,
    deadline: float = 2.0,
    source: str | None = None,
) -> bs.Received:
    """Send data on a new connection, half-close, read until the server closes."""
    return bs.send_and_read(address, data, deadline, half_close, source)


def echo_body(raw: bytes) -> dict[str, Any]:
    """The echo app's JSON from a raw response (the head may be anything)."""
    return dict(json.loads(raw[raw.rindex(b"\r\n\r\n") + 4 :]))


def _block(variables: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(
        struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v for k, v in variables
    )


def _raw_packet(block: bytes, body: bytes = b"", modifier1: int = 0) -> bytes:
    return struct.pack("<BHB", modifier1, len(block), 0) + block + body


def packet(variables: list[tuple[bytes, bytes]], body: bytes = b"", modifier1: int = 0) -> bytes:
    """A packet from raw (key, value) pairs, duplicates and empty keys allowed."""
    return _raw_packet(_block(variables), body, modifier1)


def base_pairs(path: str = "/echo", method: str = "GET") -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in uwsgi_vars(path, method).items()]


# -- C1 ---------------------------------------------------------------------------------------


def _expect_refused(
    server: ServerProcess,
    calls: bs.Calls,
    cursor: LogCursor,
    name: str,
    data: bytes,
    want_log: str | None,
    failures: list[str],
) -> int:
    """Send data; it must be closed with no response and no app call, with exactly one log
    line matching want_log (or at most one line when want_log is None). Returns the number
    of new log lines."""
    mark = calls.mark()
    reply = send_raw(("127.0.0.1", server.port), data)
    lines = cursor.new()
    if not reply.closed:
        failures.append(f"{name}: not closed within 2 s")
    if reply.raw:
        failures.append(f"{name}: answered {reply.raw[:80]!r}")
    if calls.since(mark):
        failures.append(f"{name}: app called {calls.since(mark)}")
    if want_log is None:
        if len(lines) > 1:
            failures.append(f"{name}: {len(lines)} log lines {lines[:3]}")
    elif len(lines) != 1 or not re.search(want_log, lines[0]):
        failures.append(f"{name}: log lines {lines[:3]}, expected one matching /{want_log}/")
    return len(lines)


@pytest.mark.timeout(180)
def test_c1_malformed_packets_close_without_an_app_call(
    muleteer_server: ServerFactory, tmp_path: Path, record_figure: Figure
) -> None:
    server, calls = uwsgi_server(muleteer_server, tmp_path, "--buffer-size", "8192")
    workers = set(server.pids("worker"))
    cursor = LogCursor(server)
    failures: list[str] = []
    body = b"0123456789"
    valid = uwsgi_packet(uwsgi_vars("/echo?x=1", "POST", body, HTTP_X_A="b"), body)

    # The control: the whole packet is one app call.
    mark = calls.mark()
    reply = send_raw(("127.0.0.1", server.port), valid)
    assert reply.raw.startswith(b"HTTP/1.1 200 OK\r\n"), reply.raw[:100]
    assert len(calls.since(mark)) == 1
    cursor.new()

    # Every truncation offset, then the socket half-closed.
    logged = 0
    for offset in range(len(valid)):
        logged += _expect_refused(
            server, calls, cursor, f"truncated at {offset}", valid[:offset], None, failures
        )
    record_figure("C1", "truncation offsets tried", len(valid))
    record_figure("C1", "truncations that logged a line (<= 1 each)", logged)

    # Random bytes, and random var blocks behind a well-formed header.
    rng = random.Random(0xC1)
    for i in range(300):
        data = rng.randbytes(rng.randint(1, 600))
        _expect_refused(server, calls, cursor, f"random {i}", data, None, failures)
    for i in range(300):
        block = rng.randbytes(rng.randint(0, 300))
        data = struct.pack("<BHB", 0, len(block), 0) + block
        _expect_refused(server, calls, cursor, f"random block {i}", data, None, failures)
    record_figure("C1", "random byte strings / random var blocks", "300 / 300")

    # Each structural fault: exactly one log line naming it.
    ok = base_pairs()
    faults: list[tuple[str, bytes, str]] = [
        (
            "datasize 8193 > buffer-size 8192",
            struct.pack("<BHB", 0, 8193, 0) + b"\x01\x00a" * 2731,
            r"invalid request block size: 8193 \(max 8192\)",
        ),
        ("zero-length key", packet([*ok, (b"", b"v")]), "zero-length uwsgi key"),
        (
            "1001 vars",
            packet([*ok, *((b"%03d" % i, b"") for i in range(1001 - len(ok)))]),
            "more than 1000 uwsgi vars",
        ),
        (
            "duplicate CONTENT_LENGTH",
            packet([*ok, (b"CONTENT_LENGTH", b"1"), (b"CONTENT_LENGTH", b"3")], b"abc"),
            "duplicate uwsgi var",
        ),
        (
            "duplicate CONTENT_LENGTH, same value",
            packet([*ok, (b"CONTENT_LENGTH", b"3"), (b"CONTENT_LENGTH", b"3")], b"abc"),
            "duplicate uwsgi var",
        ),
        (
            "var length past the block",
            _raw_packet(_block(ok) + b"\x03\x00KEY\xf4\x01short"),
            "past the end",
        ),
        ("one trailing byte in the block", _with_trailing(packet(ok), b"\x07"), "truncated"),
        (
            "no REQUEST_METHOD",
            packet([p for p in ok if p[0] != b"REQUEST_METHOD"]),
            "REQUEST_METHOD",
        ),
    ]
    for modifier in (1, 5, 17, 255):
        faults.append(
            (f"modifier1 {modifier}", packet(ok, modifier1=modifier), "unavailable modifier")
        )
    for value in (b"+1", b"0x1", b"-1", b" 1", b"1 ", b"1_0", b"\xb9"):
        faults.append(
            (
                f"CONTENT_LENGTH {value!r}",
                packet([*ok, (b"CONTENT_LENGTH", value)], b"xxxxxxxxxxxxxxxxxx"),
                "invalid CONTENT_LENGTH",
            )
        )
    for name, data, want in faults:
        _expect_refused(server, calls, cursor, name, data, want, failures)
    # The boundary next to "1001 vars": exactly 1000 is served.
    mark = calls.mark()
    reply = send_raw(
        ("127.0.0.1", server.port),
        packet([*ok, *((b"%03d" % i, b"") for i in range(1000 - len(ok)))]),
    )
    if not reply.raw.startswith(b"HTTP/1.1 200") or len(calls.since(mark)) != 1:
        failures.append(f"1000 vars: {reply.raw[:60]!r}")
    record_figure("C1", "structural faults tried", len(faults))
    record_figure("C1", "packets answered, called the app or logged badly", len(failures))
    assert set(server.pids("worker")) == workers
    assert not failures, "\n".join(failures[:40])


def _with_trailing(data: bytes, extra: bytes) -> bytes:
    """The packet with extra bytes appended to its vars block (datasize adjusted)."""
    modifier1, size, modifier2 = struct.unpack_from("<BHB", data)
    block = data[4 : 4 + size] + extra
    return struct.pack("<BHB", modifier1, len(block), modifier2) + block + data[4 + size :]


# -- C2 / C3 / C4 --------------------------------------------------------------------------------


def test_c2_a_body_carrying_a_packet_is_only_a_body(
    muleteer_server: ServerFactory, tmp_path: Path, record_figure: Figure
) -> None:
    server, calls = uwsgi_server(muleteer_server, tmp_path)
    marker = tmp_path / "c2-marker"
    evil = tmp_path / "bcf_evil_c2.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n")
    inner_vars = uwsgi_vars("/inner", UWSGI_FILE=f"exec://touch {marker}")
    inner = uwsgi_packet(inner_vars)
    inner_file = uwsgi_packet(uwsgi_vars("/inner-file", UWSGI_FILE=str(evil)))
    address = ("127.0.0.1", server.port)
    failures = []
    variants = {
        "body is a packet": uwsgi_packet(uwsgi_vars("/echo", "POST", inner), inner),
        "packet after the body": uwsgi_packet(uwsgi_vars("/echo", "POST", b"abc"), b"abc") + inner,
        "packet after an empty body": uwsgi_packet(uwsgi_vars("/echo")) + inner + inner_file,
        "two packets in the body": uwsgi_packet(
            uwsgi_vars("/echo", "POST", inner + inner_file), inner + inner_file
        ),
    }
    for name, data in variants.items():
        mark = calls.mark()
        reply = send_raw(address, data)
        new = calls.since(mark)
        if len(new) != 1 or not new[0].endswith(" /echo"):
            failures.append(f"{name}: app calls {new}")
            continue
        echo = echo_body(reply.raw)
        sent_body = data[4 + struct.unpack_from("<H", data, 1)[0] :]
        length = int(echo["environ"].get("CONTENT_LENGTH") or 0)
        if base64.b64decode(echo["body_b64"]) != sent_body[:length]:
            failures.append(f"{name}: body {echo['body_b64'][:40]}")
        if not reply.closed:
            failures.append(f"{name}: connection not closed after the response")
    if marker.exists():
        failures.append("the marker file was created: a packet in a body was executed")
    record_figure("C2", "body-carries-a-packet variants failing", len(failures))
    assert not failures, "\n".join(failures)


MAGIC = ("UWSGI_FILE", "UWSGI_SCRIPT", "UWSGI_MODULE", "UWSGI_CALLABLE", "UWSGI_CHDIR")


def test_c3_magic_variables_are_plain_strings(
    muleteer_server: ServerFactory, tmp_path: Path, record_figure: Figure
) -> None:
    server, calls = uwsgi_server(muleteer_server, tmp_path)
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    markers = {name: tmp_path / f"marker-{name}" for name in ("file", "module", "exec")}
    (evil_dir / "bcf_evil_file.py").write_text(
        f"open({str(markers['file'])!r}, 'w').close()\napplication = None\n"
    )
    (evil_dir / "bcf_evil_module.py").write_text(
        f"open({str(markers['module'])!r}, 'w').close()\napplication = None\n"
    )
    magic = {
        "UWSGI_FILE": str(evil_dir / "bcf_evil_file.py"),
        "UWSGI_SCRIPT": "bcf_evil_module",
        "UWSGI_MODULE": "bcf_evil_module",
        "UWSGI_CALLABLE": "application",
        "UWSGI_PYHOME": str(evil_dir),
        "UWSGI_PYTHONPATH": str(evil_dir),
        "UWSGI_CHDIR": str(evil_dir),
        "UWSGI_SETENV": "BCF_INJECTED=1",
        "UWSGI_APPID": "evil",
        "UWSGI_TOUCH_RELOAD": str(tmp_path / "touched"),
    }
    failures = []
    cwds = set()
    pids = set()
    packets: list[dict[str, str]] = []
    replies: list[bs.Received] = []

    def send(variables: dict[str, str]) -> bs.Received:
        return send_raw(("127.0.0.1", server.port), uwsgi_packet(variables))

    for pair in range(5):
        # A pair, the first holding its worker for 0.3 s: the second goes to the other
        # worker. Pairs until both workers have answered (at most 5).
        held = uwsgi_vars(f"/echo/{pair}a?hold=0.3")
        held.update(magic)
        quick = uwsgi_vars(f"/echo/{pair}b")
        quick.update(magic, UWSGI_FILE=f"exec://touch {markers['exec']}")
        packets += [held, quick]
        replies += bs.staggered_pair(partial(send, held), partial(send, quick))
        pids |= {r.raw.split(b"X-Pid: ", 1)[-1].split(b"\r\n", 1)[0] for r in replies[-2:]}
        if len(pids) == 2:
            break
    for round_, (variables, reply) in enumerate(zip(packets, replies, strict=True)):
        if not reply.raw.startswith(b"HTTP/1.1 200"):
            failures.append(f"round {round_}: {reply.raw[:80]!r}")
            continue
        echo = echo_body(reply.raw)
        for key, value in variables.items():
            if key.startswith("UWSGI_") and echo["environ"].get(key, value) != value:
                failures.append(f"{key} reached the app as {echo['environ'][key]!r}")
        process = echo["process"]
        cwds.add(process["cwd"])
        if process["bcf_env"] != ["BCF_CALLS"]:
            failures.append(f"process environment changed: {process['bcf_env']}")
        if process["evil_modules"]:
            failures.append(f"imported: {process['evil_modules']}")
    if cwds != {str(tmp_path)}:
        failures.append(f"working directory changed: {cwds}")
    made = [name for name, path in markers.items() if path.exists()]
    if made:
        failures.append(f"markers created: {made}")
    record_figure(
        "C3", "magic variables sent / workers that saw them", f"{len(magic)} / {len(pids)}"
    )
    record_figure("C3", "magic-variable effects observed", len(failures))
    assert not failures, "\n".join(failures)
    assert len(calls.lines()) == len(packets)
    assert len(pids) == 2, "the magic variables reached only one worker"


def test_c4_protocol_and_method_injection_is_closed(
    muleteer_server: ServerFactory, tmp_path: Path, record_figure: Figure
) -> None:
    server, calls = uwsgi_server(muleteer_server, tmp_path)
    cursor = LogCursor(server)
    failures: list[str] = []
    injections = {
        "SERVER_PROTOCOL": [
            "AAA HTTP/1.1\r\nX-Injected: y",
            "HTTP/1.1\r\nX-Injected: y",
            "HTTP/1.1 200 OK\r\nX-Injected: y\r\n\r\n",
            "HTTP/1.1\nX-Injected: y",
            "HTTP/1.1\rX-Injected: y",
            "HTTP/1.1\x00X-Injected",
            "HTTP/9.9",
        ],
        "REQUEST_METHOD": [
            "GET\r\nX-Injected: y",
            "GET\nX-Injected: y",
            "GET X-Injected",
            "GET\x00X-Injected",
        ],
        "REQUEST_URI": ["/echo\r\nX-Injected: y"],
    }
    tried = 0
    for key, values in injections.items():
        for value in values:
            tried += 1
            variables = uwsgi_vars("/echo")
            variables[key] = value
            mark = calls.mark()
            reply = send_raw(("127.0.0.1", server.port), uwsgi_packet(variables))
            lines = cursor.new()
            if reply.raw and not reply.raw.startswith(b"HTTP/1.0 400"):
                failures.append(f"{key}={value!r}: answered {reply.raw[:80]!r}")
            if b"Injected" in reply.raw:
                failures.append(f"{key}={value!r}: injected bytes in the response")
            if calls.since(mark):
                failures.append(f"{key}={value!r}: app called")
            if not reply.closed or len(lines) != 1:
                failures.append(f"{key}={value!r}: closed={reply.closed} log={lines[:2]}")
    # CR/LF in vars that never reach the response head is legitimate (nginx sends PATH_INFO
    # percent-decoded): served, and the response head carries none of it.
    variables = uwsgi_vars("/echo", HTTP_X_TEXT="a\r\nX-Injected: y")
    variables["PATH_INFO"] = "/echo/a\r\nX-Injected: y"
    reply = send_raw(("127.0.0.1", server.port), uwsgi_packet(variables))
    head = reply.raw.split(b"\r\n\r\n", 1)[0]
    if not reply.raw.startswith(b"HTTP/1.1 200") or b"Injected" in head:
        failures.append(f"CR/LF in PATH_INFO and HTTP_X_TEXT: {reply.raw[:120]!r}")
    elif echo_body(reply.raw)["environ"]["PATH_INFO"] != variables["PATH_INFO"]:
        failures.append("PATH_INFO with CR/LF did not reach the app unchanged")
    record_figure("C4", "injection packets tried / failing", f"{tried} / {len(failures)}")
    assert not failures, "\n".join(failures)


# -- C5: real nginx ------------------------------------------------------------------------------

NGINX_LOCATIONS = """
        location /unix/ {{ include {params}; uwsgi_pass unix:{unix}; }}
        location /tcp/ {{ include {params}; uwsgi_pass 127.0.0.1:{tcp}; }}
        location /small/ {{ include {params}; uwsgi_pass 127.0.0.1:{small}; }}
"""
NGINX_HTTP = """
    client_max_body_size 16m;
    large_client_header_buffers 8 16k;
    uwsgi_read_timeout 10s;
"""

NGINX_PARAMS = """
uwsgi_param QUERY_STRING $query_string;
uwsgi_param REQUEST_METHOD $request_method;
uwsgi_param CONTENT_TYPE $content_type;
uwsgi_param CONTENT_LENGTH $content_length;
uwsgi_param REQUEST_URI $request_uri;
uwsgi_param PATH_INFO $document_uri;
uwsgi_param SERVER_PROTOCOL $server_protocol;
uwsgi_param REMOTE_ADDR $remote_addr;
uwsgi_param REMOTE_PORT $remote_port;
uwsgi_param SERVER_PORT $server_port;
uwsgi_param SERVER_NAME $server_name;
"""


def _http(port: int, request: bytes, deadline: float = 20.0) -> bs.Exchange:
    return bs.exchange(port, request, deadline=deadline, half_close=False)


def _wrk(port: int, path: str) -> tuple[dict[str, int], str]:
    """wrk -t2 -c32 -d5s: requests, socket errors, non-2xx/3xx; or the load client through
    nginx when wrk is missing."""
    wrk = shutil.which("wrk")
    if wrk is None:
        from loadclient import run_load

        result = run_load(port, duration=5.0, concurrency=32, keepalive=True, path=path)
        figures = {
            "requests": len(result.outcomes),
            "errors": sum(1 for o in result.outcomes if o.status == 0),
            "non2xx": sum(1 for o in result.outcomes if o.status not in (0, 200)),
        }
        return figures, f"load client: {result.errors()}"
    out = subprocess.run(
        [wrk, "-t2", "-c32", "-d5s", f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    requests = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures = {
        "requests": int(requests.group(1)) if requests else 0,
        "errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
    }
    return figures, out


@pytest.mark.timeout(180)
def test_c5_real_nginx_uwsgi_pass(
    muleteer_server: ServerFactory, tmp_path: Path, record_figure: Figure
) -> None:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (.ci/run installs it with apt-get)")
    unix = str(tmp_path / "u.sock")
    server, calls = uwsgi_server(
        muleteer_server, tmp_path, "--socket", unix, "--buffer-size", "16384"
    )
    (tmp_path / "small").mkdir()
    small, _ = uwsgi_server(muleteer_server, tmp_path / "small")
    wd = tmp_path / "nginx"
    wd.mkdir()
    params = wd / "uwsgi_params"
    params.write_text(NGINX_PARAMS)
    locations = NGINX_LOCATIONS.format(params=params, unix=unix, tcp=server.port, small=small.port)
    with Nginx(wd, locations, NGINX_HTTP) as port:
        failures: list[str] = []
        before = {"small": LogCursor(small), "server": LogCursor(server)}
        for transport in ("unix", "tcp"):
            figures, out = _wrk(port, f"/{transport}/echo")
            record_figure(
                "C5",
                f"nginx uwsgi_pass over {transport}: wrk -c32 -d5s",
                f"{figures['requests']} requests, {figures['errors']} errors, "
                f"{figures['non2xx']} non-2xx",
            )
            if figures["requests"] < 100 or figures["errors"] or figures["non2xx"]:
                failures.append(f"{transport}: {figures} {out[-400:]}")
        # 12 KiB of request headers: served with buffer-size 16384...
        big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"h" * 4000) for i in range(3))
        request = b"GET /%s/echo HTTP/1.1\r\nHost: a\r\n" + big + b"Connection: close\r\n\r\n"
        ex = _http(port, request % b"tcp")
        if ex.statuses != [200]:
            failures.append(f"12 KiB headers, buffer-size 16384: {ex.statuses}")
        elif len(echo_of_ex(ex)["environ"].get("HTTP_X_BIG_2", "")) != 4000:
            failures.append("12 KiB headers: the app did not get them whole")
        # ...and refused with one clear line at the default 4096 (nginx answers 502).
        small_log = LogCursor(small)
        ex = _http(port, request % b"small")
        lines = small_log.new()
        if ex.statuses != [502]:
            failures.append(f"12 KiB headers, buffer-size 4096: nginx answered {ex.statuses}")
        wanted = [
            line
            for line in lines
            if re.search(r"invalid request block size: \d+ \(max 4096\)", line)
        ]
        if len(wanted) != 1 or len(lines) != 1:
            failures.append(f"12 KiB headers at 4096: log lines {lines}")
        record_figure(
            "C5",
            "12 KiB headers at buffer-size 4096",
            (wanted or lines or ["no log line"])[0].split("WARNING: ")[-1],
        )
        # A 5 MiB body, through the unix socket.
        payload = random.Random(5).randbytes(5 << 20)
        head = (
            b"POST /unix/echo HTTP/1.1\r\nHost: a\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n"
        )
        ex = _http(port, head % len(payload) + payload, deadline=30)
        if ex.statuses != [200] or base64.b64decode(echo_of_ex(ex)["body_b64"]) != payload:
            failures.append(f"5 MiB body: {ex.statuses}")
        record_figure(
            "C5", "5 MiB body through nginx", "ok" if ex.statuses == [200] else ex.statuses
        )
        # nginx notes at [warn] level when it spools a large response to disk because the
        # client reads slower than the upstream sends (timing-dependent with the 5 MiB
        # echo); that is buffering, not an upstream fault.
        errors = [
            line
            for line in (wd / "error.log").read_text().splitlines()
            if "upstream" in line
            and "/small/" not in line
            and "is buffered to a temporary file" not in line
        ]
        if errors:
            failures.append(f"nginx upstream errors: {errors[:5]}")
        server_problems = [
            line for line in before["server"].new() if "WARNING" in line or "ERROR" in line
        ]
        if server_problems:
            failures.append(f"muleteer warnings under load: {server_problems[:5]}")
        assert calls.lines(), "no request reached the app"
        assert not failures, "\n".join(failures)


def echo_of_ex(ex: bs.Exchange) -> dict[str, Any]:
    return dict(json.loads(ex.responses[0].body))


# -- C6: peer allow-list ---------------------------------------------------------------------------


def test_c6_uwsgi_peer_allow_list(
    muleteer_server: ServerFactory, tmp_path: Path, record_figure: Figure
) -> None:
    data = uwsgi_packet(uwsgi_vars("/echo"))
    server, calls = uwsgi_server(muleteer_server, tmp_path)
    cursor = LogCursor(server)
    reply = send_raw(("127.0.0.1", server.port), data, source="127.0.0.2")
    lines = cursor.new()
    assert reply.closed and reply.raw == b"", reply.raw[:80]
    assert calls.lines() == []
    assert len(lines) == 1 and "127.0.0.2" in lines[0] and "uwsgi-allow-ips" in lines[0], lines
    reply = send_raw(("127.0.0.1", server.port), data, source="127.0.0.1")
    assert reply.raw.startswith(b"HTTP/1.1 200"), "loopback must be allowed by default"
    record_figure("C6", "127.0.0.2 with the default allow-list", "closed, no app call, 1 log line")

    (tmp_path / "allow").mkdir()
    allowed, calls = uwsgi_server(
        muleteer_server, tmp_path / "allow", "--uwsgi-allow-ips", "127.0.0.2"
    )
    reply = send_raw(("127.0.0.1", allowed.port), data, source="127.0.0.2")
    assert reply.raw.startswith(b"HTTP/1.1 200"), reply.raw[:80]
    assert echo_body(reply.raw)["environ"]["REMOTE_ADDR"] == "127.0.0.1"  # the packet's value
    assert len(calls.lines()) == 1
    # The list replaces the default: 127.0.0.1 is now refused.
    reply = send_raw(("127.0.0.1", allowed.port), data, source="127.0.0.1")
    assert reply.raw == b"" and len(calls.lines()) == 1
    record_figure("C6", "127.0.0.2 with --uwsgi-allow-ips 127.0.0.2", "served; 127.0.0.1 refused")


# -- C7: differential against uWSGI -------------------------------------------------------------


# Environ keys that are the server's own, not the peer's: not compared.
IGNORED_KEYS = {
    "wsgi.*": "PEP 3333 keys each server sets itself (only wsgi.url_scheme is a str; it is "
    "compared separately)",
    "uwsgi.*": "uWSGI's own keys (uwsgi.version, uwsgi.node); muleteer mimics some",
    "keys absent from the packet": "defaults a server adds when the peer did not send the "
    "var (muleteer: SCRIPT_NAME, SERVER_NAME, SERVER_PORT from the listener, PATH_INFO '/', "
    "QUERY_STRING '', SERVER_PROTOCOL 'HTTP/1.0'; uWSGI adds none)",
    "HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": "muleteer drops them (PEP 3333 wants only the "
    "unprefixed ones); the generator never sends them",
    "BCF_CALLS": "the test's own environment variable",
    "wsgi.url_scheme when UWSGI_SCHEME is not http/https": "uWSGI copies any UWSGI_SCHEME "
    "value ('off', '1', 'ftp') into wsgi.url_scheme; muleteer honours only http and https "
    "(PEP 3333: the scheme is 'http' or 'https')",
}

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO", "get", "G T", "", "GET\r\n"]
PROTOCOLS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1", "", "HTTP/1.1\r\nX: y", None]
LENGTHS = ["+1", "0x1", "-1", " 1", "1 ", "", "abc", "00", "9" * 20, "1_0"]


def _random_text(rng: random.Random, size: int, alphabet: str | None = None) -> str:
    if alphabet is not None:
        return "".join(rng.choice(alphabet) for _ in range(size))
    chars = [
        chr(rng.choice([*range(0x20, 0x7F), 0x0D, 0x0A, 0x00, 0x09, 0xE9, 0xFF]))
        for _ in range(size)
    ]
    return "".join(chars)


def generate_packet(rng: random.Random) -> bytes:
    """One packet: nginx-like vars, then up to three mutations."""
    body = rng.randbytes(rng.choice([0, 0, 3, 40]))
    pairs: list[tuple[bytes, bytes]] = [
        (k.encode(), v.encode("latin-1"))
        for k, v in uwsgi_vars(
            "/gen/" + _random_text(rng, rng.randint(0, 8), "abcXYZ019-._~%!$&'()*+,;=:@/"),
            rng.choice(["GET", "POST"]),
            body,
        ).items()
    ]
    modifier1 = 0
    tail = body
    for _ in range(rng.randint(0, 3)):
        kind = rng.randrange(14)
        if kind == 0:
            name = "HTTP_" + _random_text(rng, rng.randint(1, 10), "ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
            if name not in ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
                pairs.append(
                    (name.encode(), _random_text(rng, rng.randint(0, 30)).encode("latin-1"))
                )
        elif kind == 1:
            name = "X" + _random_text(rng, rng.randint(0, 10), "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123")
            pairs.append((name.encode(), _random_text(rng, rng.randint(0, 30)).encode("latin-1")))
        elif kind == 2:
            pairs = [p for p in pairs if p[0] != b"REQUEST_METHOD"]
            method = rng.choice([*METHODS, None])
            if method is not None:
                pairs.append((b"REQUEST_METHOD", method.encode()))
        elif kind == 3:
            pairs = [p for p in pairs if p[0] != b"SERVER_PROTOCOL"]
            protocol = rng.choice(PROTOCOLS)
            if protocol is not None:
                pairs.append((b"SERVER_PROTOCOL", protocol.encode()))
        elif kind == 4:
            pairs = [p for p in pairs if p[0] != b"CONTENT_LENGTH"]
            pairs.append((b"CONTENT_LENGTH", rng.choice(LENGTHS).encode()))
            tail = rng.randbytes(rng.choice([0, 1, 5]))
        elif kind == 5:
            key = rng.choice([b"PATH_INFO", b"QUERY_STRING", b"HTTP_HOST", b"REMOTE_ADDR"])
            pairs.append((key, _random_text(rng, rng.randint(0, 12)).encode("latin-1")))
        elif kind == 6 and any(p[0] == b"CONTENT_LENGTH" for p in pairs):
            pairs.append((b"CONTENT_LENGTH", str(len(body)).encode()))
        elif kind == 7:
            pairs.append((b"", b"v"))
        elif kind == 8:
            modifier1 = rng.choice([1, 5, 9])
        elif kind == 9:
            pairs.append(
                (
                    rng.choice([b"HTTPS", b"UWSGI_SCHEME"]),
                    rng.choice([b"on", b"1", b"off", b"https", b"http", b"ftp"]),
                )
            )
        elif kind == 10:
            for i in range(rng.randint(10, 25)):
                pairs.append((b"HTTP_X_%d" % i, b"v" * rng.randint(0, 20)))
        elif kind == 11:
            pairs.append((b"PATH_INFO", b"/nul\x00here"))
        elif kind == 12:
            pairs.append((b"HTTP_X_BIG", b"b" * rng.choice([3000, 4100])))
        else:
            tail = tail + rng.randbytes(rng.randint(1, 6))  # bytes after the body
    data = packet(pairs, tail, modifier1)
    cut = rng.randrange(10)
    if cut == 0:  # datasize says more or less than the block holds
        size = struct.unpack_from("<H", data, 1)[0]
        new_size = max(0, size + rng.choice([-3, -1, 1, 2]))
        data = data[:1] + struct.pack("<H", new_size) + data[3:]
    elif cut == 1:
        data = _with_trailing(data, rng.randbytes(rng.randint(1, 3)))
    return data


def _compare(sent: bytes, mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Differences between the environs the two apps saw, on the keys the packet sent."""
    size = struct.unpack_from("<H", sent, 1)[0]
    block = sent[4 : 4 + size]
    keys = set()
    pos = 0
    while pos + 2 <= len(block):
        length = struct.unpack_from("<H", block, pos)[0]
        keys.add(block[pos + 2 : pos + 2 + length].decode("latin-1"))
        pos += 2 + length
        if pos + 2 > len(block):
            break
        pos += 2 + struct.unpack_from("<H", block, pos)[0]
    keys -= {"HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE", "BCF_CALLS"}
    out = []
    for key in sorted(keys):
        if key.startswith(("wsgi.", "uwsgi.")):
            continue
        a, b = mine["environ"].get(key), theirs["environ"].get(key)
        if a != b:
            out.append(f"{key}: muleteer {a!r}, uWSGI {b!r}")
    scheme = (mine["environ"].get("wsgi.url_scheme"), theirs["environ"].get("wsgi.url_scheme"))
    forced = mine["environ"].get("UWSGI_SCHEME")
    if scheme[0] != scheme[1] and (forced is None or forced in ("http", "https")):
        https = (mine["environ"].get("HTTPS"), forced)
        out.append(
            f"wsgi.url_scheme: muleteer {scheme[0]}, uWSGI {scheme[1]} "
            f"(HTTPS, UWSGI_SCHEME = {https})"
        )
    if mine["body_b64"] != theirs["body_b64"]:
        out.append("body differs")
    return out


def _run_differential(
    muleteer_server: ServerFactory, tmp_path: Path, count: int
) -> tuple[dict[str, Any], list[str]]:
    binary, why_not = bs.uwsgi_binary()
    if binary is None:
        pytest.skip(f"uWSGI {bs.UWSGI_VERSION} cannot be built: {why_not}")
    server, mine_calls = uwsgi_server(muleteer_server, tmp_path)
    theirs_calls = bs.Calls(tmp_path / "uwsgi-calls.txt")
    anchor = bs.uwsgi(binary, tmp_path, "uwsgi", env={"BCF_CALLS": str(theirs_calls.path)})
    rng = random.Random(0xC7)
    counts: dict[str, Any] = {
        "both accept": 0,
        "both refuse": 0,
        "only uWSGI accepts": 0,
        "only muleteer accepts": 0,
    }
    problems: list[str] = []
    try:
        for index in range(count):
            data = generate_packet(rng)
            results = []
            for port, calls in ((server.port, mine_calls), (anchor.port, theirs_calls)):
                mark = calls.mark()
                reply = send_raw(("127.0.0.1", port), data, deadline=5.0)
                called = len(calls.since(mark)) == 1
                echo = None
                if called and reply.raw.count(b"\r\n\r\n"):
                    try:
                        echo = echo_body(reply.raw)
                    except ValueError:
                        echo = None
                results.append((called, echo, reply))
            (mine_called, mine_echo, mine_reply), (their_called, their_echo, _) = results
            if mine_called and their_called:
                counts["both accept"] += 1
                if mine_echo is None or their_echo is None:
                    problems.append(f"#{index}: an accepted packet without an echo {data[:60]!r}")
                    continue
                diff = _compare(data, mine_echo, their_echo)
                if diff:
                    problems.append(f"#{index} {data[:80]!r}: {diff}")
            elif their_called:
                counts["only uWSGI accepts"] += 1
            elif mine_called:
                counts["only muleteer accepts"] += 1
                problems.append(f"#{index}: muleteer accepts, uWSGI refuses: {data[:100]!r}")
            else:
                counts["both refuse"] += 1
                if mine_reply.raw:
                    problems.append(f"#{index}: refused but answered {mine_reply.raw[:60]!r}")
    finally:
        anchor.stop()
    # Why muleteer refused: its log lines, with values left out.
    reasons: dict[str, int] = {}
    for line in server.log_text().splitlines():
        if "WARNING: uwsgi from " in line:
            reason = line.split("WARNING: uwsgi from ", 1)[1].split(": ", 1)[-1]
            reason = re.sub(r"'.*'|\".*\"|\d+", "N", reason)
            reasons[reason] = reasons.get(reason, 0) + 1
    top = sorted(reasons.items(), key=lambda item: -item[1])[:8]
    counts["muleteer refusal reasons"] = "; ".join(f"{r} x{n}" for r, n in top)
    return counts, problems


@pytest.mark.timeout(300)
def test_c7_differential_against_uwsgi(
    muleteer_server: ServerFactory, tmp_path: Path, record_figure: Figure
) -> None:
    counts, problems = _run_differential(muleteer_server, tmp_path, 1000)
    for what, value in counts.items():
        record_figure("C7", f"1000 packets vs uWSGI {bs.UWSGI_VERSION} --socket: {what}", value)
    record_figure("C7", "environ keys ignored", "; ".join(IGNORED_KEYS))
    record_figure("C7", "differences", len(problems))
    assert counts["both accept"] >= 200, counts  # the generator must reach the app often
    assert not problems, "\n".join(problems[:30])


@pytest.mark.nightly
@pytest.mark.timeout(1800)
def test_c7_differential_against_uwsgi_nightly(
    muleteer_server: ServerFactory, tmp_path: Path, record_figure: Figure
) -> None:
    counts, problems = _run_differential(muleteer_server, tmp_path, 20000)
    record_figure("C7", "20k packets (nightly)", counts)
    assert not problems, "\n".join(problems[:30])
