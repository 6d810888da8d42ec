"""The uwsgi protocol on --socket: a raw client, then real nginx `uwsgi_pass` in front."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import app_path, split_response, uwsgi_packet, uwsgi_request, uwsgi_vars
from muleteer.pytest_plugin import ServerProcess, free_port
from nginx import UWSGI_PARAMS, Nginx, nginx_binary

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("uwsgi")
    port = free_port()
    unix = str(workdir / "app.sock")
    proc = ServerProcess(
        [
            "--socket",
            f"127.0.0.1:{port}",
            "--socket",
            unix,
            "--processes",
            "2",
            "--wsgi-file",
            app_path("testapp.py"),
            "--buffer-size",
            "16384",
            "--limit-post",
            "10485760",
        ],
        workdir,
        port=port,
        protocol="uwsgi",
    )
    proc.start()
    proc.unix = unix  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def echo(response: bytes) -> dict:
    status, _, body = split_response(response)
    assert status == 200, response[:200]
    return json.loads(body)


def test_uwsgi_vars_become_the_environ(server: ServerProcess) -> None:
    response = uwsgi_request(
        ("127.0.0.1", server.port),
        uwsgi_vars(
            "/echo?x=1",
            "POST",
            b"abc",
            CONTENT_TYPE="text/plain",
            HTTP_X_THING="yes",
            UWSGI_FILE="exec://touch /tmp/x",
        ),
        b"abc",
    )
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    data = echo(response)
    env = data["environ"]
    assert env["PATH_INFO"] == "/echo" and env["QUERY_STRING"] == "x=1"
    assert env["HTTP_X_THING"] == "yes" and env["CONTENT_TYPE"] == "text/plain"
    assert data["body"] == "abc"
    assert env["UWSGI_FILE"] == "exec://touch /tmp/x"  # a plain string, never executed


def test_unix_socket_and_https_scheme(server: ServerProcess) -> None:
    data = echo(uwsgi_request(server.unix, uwsgi_vars("/echo", HTTPS="on")))  # type: ignore[attr-defined]
    assert data["url_scheme"] == "https"


def test_response_is_raw_http_and_the_connection_closes(server: ServerProcess) -> None:
    response = uwsgi_request(("127.0.0.1", server.port), uwsgi_vars("/chunked"))
    status, headers, body = split_response(response)
    # No chunking on the uwsgi protocol: the body ends where the connection ends.
    assert status == 200 and "transfer-encoding" not in headers
    assert body == b"a" * 10 + b"b" * 20 + b"c" * 30


def test_body_carrying_a_packet_is_only_a_body(server: ServerProcess, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    inner = uwsgi_packet(uwsgi_vars("/", UWSGI_FILE=f"exec://touch {marker}"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(uwsgi_packet(uwsgi_vars("/echo", "POST", inner), inner) + inner)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 1
    assert echo(data)["body"].encode("latin-1") == inner
    assert not marker.exists()


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"\x00\xff\xff\x00" + b"x" * 10, "invalid request block size"),
        (
            uwsgi_packet({"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "AAA HTTP/1.1\r\nX: y"}),
            "invalid uwsgi request",
        ),
        (uwsgi_packet(uwsgi_vars("/", CONTENT_LENGTH="+1")), "invalid CONTENT_LENGTH"),
        (uwsgi_packet(uwsgi_vars("/"), modifier1=5), "unavailable modifier requested: 5"),
        (b"\x00\x05\x00\x00\x00\x00\x01\x00x", "invalid uwsgi request"),  # zero-length key
    ],
)
def test_malformed_packets_are_closed_with_one_log_line(
    server: ServerProcess, packet: bytes, reason: str
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(packet)
        data = sock.recv(65536)
    assert b"HTTP/1.1 200" not in data and b"X: y" not in data
    server.wait_log(reason)
    assert echo(uwsgi_request(("127.0.0.1", server.port), uwsgi_vars("/echo")))


# -- real nginx in front --------------------------------------------------------------------

LOCATIONS = """
        location /unix/ {{ include {params}; uwsgi_pass unix:{unix}; }}
        location / {{ include {params}; uwsgi_pass 127.0.0.1:{backend}; }}
"""


@pytest.fixture(scope="module")
def nginx(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if nginx_binary() is None or not os.path.exists(UWSGI_PARAMS):
        pytest.skip("nginx is not installed (.ci/run installs it with apt-get)")
    locations = LOCATIONS.format(
        params=UWSGI_PARAMS,
        unix=server.unix,  # type: ignore[attr-defined]
        backend=server.port,
    )
    http = "    client_max_body_size 10m;\n    large_client_header_buffers 4 16k;"
    with Nginx(tmp_path_factory.mktemp("nginx"), locations, http) as port:
        yield port


def nginx_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_nginx_uwsgi_pass_get(nginx: int) -> None:
    status, body = nginx_request(nginx, "GET", "/echo?q=1", headers={"X-Hello": "nginx"})
    env = json.loads(body)["environ"]
    assert status == 200
    assert env["HTTP_X_HELLO"] == "nginx" and env["QUERY_STRING"] == "q=1"
    assert env["REQUEST_METHOD"] == "GET" and env["PATH_INFO"] == "/echo"


def test_nginx_unix_socket(nginx: int) -> None:
    status, body = nginx_request(nginx, "GET", "/unix/x")
    assert status == 200 and json.loads(body)["worker"] in (1, 2)


def test_nginx_five_mib_body(nginx: int) -> None:
    blob = os.urandom(5 * 1024 * 1024)
    status, body = nginx_request(nginx, "POST", "/echo", blob)
    assert status == 200
    assert json.loads(body)["body"].encode("latin-1") == blob


def test_nginx_large_headers(nginx: int) -> None:
    headers = {f"X-Big-{i}": "v" * 3000 for i in range(4)}  # ~12 KiB of headers
    status, body = nginx_request(nginx, "GET", "/echo", headers=headers)
    assert status == 200
    assert json.loads(body)["environ"]["HTTP_X_BIG_3"] == "v" * 3000


def test_nginx_keep_alive_client_side(nginx: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", nginx, timeout=10)
    try:
        for _ in range(50):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
    finally:
        conn.close()


def test_default_buffer_size_refuses_large_vars_with_a_log_line(
    muleteer_server, tmp_path: Path
) -> None:
    server = muleteer_server("--processes", "1", app=app_path("testapp.py"), protocol="uwsgi")
    big = uwsgi_vars("/echo", HTTP_X_BIG="v" * 6000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(uwsgi_packet(big))
        assert sock.recv(65536) == b""
    server.wait_log(r"invalid request block size: \d+ \(max 4096\)")
