"""HTTP/1.1 on --http-socket, over real sockets against a real server."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from helpers import app_path, raw_http, read_all, split_response, status_of
from muleteer.pytest_plugin import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    workdir = tmp_path_factory.mktemp("http")
    proc = ServerProcess(
        [
            "--http-socket",
            "127.0.0.1:0",
            "--processes",
            "2",
            "--wsgi-file",
            app_path("testapp.py"),
            "--limit-post",
            "1048576",
            "--http-header-timeout",
            "2",
            "--socket-timeout",
            "2",
        ],
        workdir,
    )
    # Bind to a free port chosen here so the tests know it.
    from muleteer.pytest_plugin import free_port

    proc.port = free_port()
    proc.args[1] = f"127.0.0.1:{proc.port}"
    proc.start()
    yield proc
    proc.stop()


def get(server: ServerProcess, path: str, headers: str = "", body: bytes = b"") -> bytes:
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode()
    return raw_http(server.port, request + body)


def test_get_is_served_by_a_worker(server: ServerProcess) -> None:
    response = server.get("/")
    assert response.status == 200
    payload = json.loads(response.body)
    assert payload["worker"] in (1, 2) and payload["mule"] == 0
    assert int(response.headers["X-Pid"]) in server.pids("worker")


def test_environ_of_an_http_request(server: ServerProcess) -> None:
    response = server.request(
        "POST",
        "/echo?a=1&b=%20",
        body=b"hello",
        headers={"Content-Type": "text/plain", "X-Custom": "v"},
    )
    env = json.loads(response.body)["environ"]
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/echo"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["REQUEST_URI"] == "/echo?a=1&b=%20"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "5"
    assert env["HTTP_X_CUSTOM"] == "v" and env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["SCRIPT_NAME"] == ""
    assert json.loads(response.body)["body"] == "hello"


def test_percent_decoded_path_info(server: ServerProcess) -> None:
    status, _, body = split_response(get(server, "/echo%2Fx/%C3%A9?q"))
    env = json.loads(body)["environ"]
    assert status == 200
    # PEP 3333: PATH_INFO is the decoded path, its bytes as a latin-1 string.
    assert env["PATH_INFO"] == "/echo/x/\xc3\xa9"
    assert env["REQUEST_URI"] == "/echo%2Fx/%C3%A9?q"


def test_keep_alive_and_pipelining(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        requests = (
            b"".join(b"GET /?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
            + b"GET /?n=last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(requests)
        data = read_all(sock)
    assert data.count(b"HTTP/1.1 200 OK") == 6
    assert data.rstrip().endswith(b"}")
    assert b"Connection: close" in data.split(b"HTTP/1.1 200 OK")[-1]


def test_http10_closes_unless_keep_alive(server: ServerProcess) -> None:
    response = raw_http(server.port, b"GET / HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.0 200") and b"Connection: close" in response
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = sock.recv(65536)
        assert b"Connection: keep-alive" in first
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.0 200")


def test_chunked_request_body(server: ServerProcess) -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: gone\r\n\r\n"
    response = raw_http(
        server.port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body,
    )
    status, _, payload = split_response(response)
    assert status == 200
    data = json.loads(payload)
    assert data["body"] == "hello world"
    assert "HTTP_X_TRAILER" not in data["environ"]


def test_chunked_response_without_content_length(server: ServerProcess) -> None:
    status, headers, body = split_response(get(server, "/chunked"))
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert (
        body
        == b"a\r\n"
        + b"a" * 10
        + b"\r\n14\r\n"
        + b"b" * 20
        + b"\r\n1e\r\n"
        + b"c" * 30
        + b"\r\n0\r\n\r\n"
    )


def test_write_callable(server: ServerProcess) -> None:
    assert server.get("/write").body == b"written;returned"


def test_head_204_304_have_no_body(server: ServerProcess) -> None:
    response = raw_http(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = split_response(response)
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, _, body = split_response(get(server, "/nocontent"))
    assert (status, body) == (204, b"")
    status, _, body = split_response(get(server, "/notmodified"))
    assert (status, body) == (304, b"")


def test_expect_100_continue(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = sock.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        status, _, body = split_response(read_all(sock))
    assert status == 200 and json.loads(body)["body"] == "data"


def test_expect_100_continue_refused_body_is_never_read(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /ignorebody HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200") and b"100 Continue" not in data
    assert b"Connection: close" in data


def test_body_over_limit_is_refused_before_it_is_read(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
        data = read_all(sock)
    assert status_of(data) == 413


def test_head_over_buffer_size_is_refused(server: ServerProcess) -> None:
    big = "X-Big: " + "a" * 5000 + "\r\n"
    assert status_of(get(server, "/", headers=big)) == 431
    assert status_of(get(server, "/" + "a" * 5000)) == 414


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\nHost: x\n\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: x\r\n folded: yes\r\n\r\n",
    ],
)
def test_invalid_requests_get_400_and_close(server: ServerProcess, request_bytes: bytes) -> None:
    data = raw_http(server.port, request_bytes + b"GET /canary HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(data) == 400
    assert data.count(b"HTTP/1.1") == 1  # the pipelined canary was never parsed
    assert b"Connection: close" in data
    assert server.get("/").status == 200


def test_response_header_with_crlf_is_a_500_and_a_log_line(server: ServerProcess) -> None:
    data = get(server, "/badheader")
    assert status_of(data) == 500 and b"Injected" not in data
    server.wait_log(r"invalid value for header 'X-Bad'")


def test_app_exception_is_a_500(server: ServerProcess) -> None:
    assert status_of(get(server, "/error")) == 500
    server.wait_log("boom in the app")
    assert server.get("/").status == 200


def test_short_and_long_content_length_close_the_connection(server: ServerProcess) -> None:
    for path, expected_body in (("/shortcl", b"only ten b"), ("/longcl", b"01234")):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            _, _, body = split_response(read_all(sock))  # read_all returns only at close
        assert body == expected_body


def test_file_wrapper_uses_sendfile(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(300_000))
    status, headers, body = split_response(get(server, f"/sendfile?f={path}"))
    assert status == 200 and int(headers["content-length"]) == 300_000
    assert body == path.read_bytes()


def test_large_response(server: ServerProcess) -> None:
    response = server.get("/big?n=5000000")
    assert len(response.body) == 5_000_000


def test_held_keep_alive_connections_never_block_new_ones(server: ServerProcess) -> None:
    held = []
    try:
        for _ in range(16):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(sock)
        for _ in range(10):
            start = time.monotonic()
            assert server.get("/").status == 200
            assert time.monotonic() - start < 1.0
    finally:
        for sock in held:
            sock.close()


def test_slowloris_is_closed_and_does_not_block(server: ServerProcess) -> None:
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(10)]
    try:
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(5):
            start = time.monotonic()
            assert server.get("/").status == 200
            assert time.monotonic() - start < 1.0
        # http-header-timeout is 2 s here: every slow connection is closed soon after.
        deadline = time.monotonic() + 6
        for sock in slow:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while True:
                    sock.sendall(b"X-a: b\r\n")
                    if not sock.recv(1024):
                        break
            except (ConnectionError, TimeoutError, OSError):
                pass
        assert time.monotonic() < deadline
    finally:
        for sock in slow:
            sock.close()


def test_forwarded_headers_from_trusted_peer_pass(server: ServerProcess) -> None:
    response = server.request(
        "GET", "/echo", headers={"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"}
    )
    data = json.loads(response.body)
    assert data["environ"]["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    assert data["url_scheme"] == "https"


def test_underscore_headers_are_dropped(server: ServerProcess) -> None:
    data = get(server, "/echo", headers="Content_Length: 5\r\nX_Evil: 1\r\n")
    env = json.loads(split_response(data)[2])["environ"]
    assert "HTTP_X_EVIL" not in env and "CONTENT_LENGTH" not in env
