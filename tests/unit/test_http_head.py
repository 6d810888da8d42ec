"""Valid request heads, scan_head on partial input, and the size limits (G7)."""

from __future__ import annotations

import pytest

from muleteer.http import HttpError, Limits, RequestHead, parse_head, scan_head

LIMITS = Limits()


def head(*lines: str, start: str = "GET / HTTP/1.1") -> bytes:
    """A head from its lines: request line, field lines, the final empty line."""
    return "".join(f"{line}\r\n" for line in (start, *lines)).encode("latin-1") + b"\r\n"


def parse(raw: bytes, limits: Limits = LIMITS) -> RequestHead:
    assert scan_head(raw, limits) == len(raw)
    return parse_head(raw, limits)


def status_of(raw: bytes, limits: Limits = LIMITS) -> int:
    with pytest.raises(HttpError) as info:
        parse_head(raw, limits)
    return info.value.status


# -- valid requests -----------------------------------------------------------------------


def test_get_with_query() -> None:
    req = parse(head("Host: example.com", "Accept: */*", start="GET /a%20b/c?x=1&y=%2F HTTP/1.1"))
    assert req.method == "GET"
    assert req.uri == "/a%20b/c?x=1&y=%2F"
    assert req.path == "/a%20b/c"
    assert req.query == "x=1&y=%2F"
    assert req.version == "HTTP/1.1"
    assert req.headers == [("Host", "example.com"), ("Accept", "*/*")]
    assert req.host == "example.com"
    assert req.content_length is None
    assert req.chunked is False
    assert req.keep_alive is True
    assert req.expect_continue is False


def test_empty_query_and_question_mark_only() -> None:
    assert parse(head("Host: a", start="GET /p? HTTP/1.1")).query == ""
    req = parse(head("Host: a", start="GET /p?a?b HTTP/1.1"))
    assert (req.path, req.query) == ("/p", "a?b")


def test_post_with_content_length() -> None:
    req = parse(
        head("Host: a", "Content-Type: text/plain", "Content-Length: 5", start="POST /f HTTP/1.1")
    )
    assert req.method == "POST"
    assert req.content_length == 5
    assert req.chunked is False
    assert ("Content-Length", "5") in req.headers


def test_content_length_leading_zeros_and_max_digits() -> None:
    assert parse(head("Host: a", "Content-Length: 007")).content_length == 7
    big = "9" * 19
    assert parse(head("Host: a", f"Content-Length: {big}")).content_length == int(big)


def test_chunked_post_head() -> None:
    req = parse(head("Host: a", "Transfer-Encoding: chunked", start="POST / HTTP/1.1"))
    assert req.chunked is True
    assert req.content_length is None


def test_chunked_is_case_insensitive() -> None:
    assert parse(head("Host: a", "transfer-encoding: ChUnKeD")).chunked is True


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "keep-alive", True),
        ("HTTP/1.0", "Keep-Alive", True),
        ("HTTP/1.0", "keep-alive, close", False),
        ("HTTP/1.0", "close", False),
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "CLOSE", False),
        ("HTTP/1.1", "Upgrade, Close", False),
        ("HTTP/1.1", "keep-alive", True),
        ("HTTP/1.1", "Upgrade", True),
        ("HTTP/1.1", "closed", True),  # a token list: "closed" is not "close"
    ],
)
def test_keep_alive(version: str, connection: str | None, keep_alive: bool) -> None:
    lines = ["Host: a"] + ([f"Connection: {connection}"] if connection else [])
    req = parse(head(*lines, start=f"GET / {version}"))
    assert req.version == version
    assert req.keep_alive is keep_alive


def test_connection_tokens_from_several_fields() -> None:
    req = parse(head("Host: a", "Connection: keep-alive", "connection: TE,  close "))
    assert req.keep_alive is False


def test_http10_without_host() -> None:
    req = parse(head(start="GET /x HTTP/1.0"))
    assert req.host is None
    assert req.headers == []


@pytest.mark.parametrize(
    ("line", "path", "query", "host"),
    [
        ("GET http://example.com/p?q=1 HTTP/1.1", "/p", "q=1", "example.com"),
        ("GET https://example.com:8443/a/b HTTP/1.1", "/a/b", "", "example.com:8443"),
        ("GET http://example.com HTTP/1.1", "/", "", "example.com"),
        ("GET http://example.com?x HTTP/1.1", "/", "x", "example.com"),
        ("GET HTTP://[::1]:80/ HTTP/1.1", "/", "", "[::1]:80"),
    ],
)
def test_absolute_form(line: str, path: str, query: str, host: str) -> None:
    # RFC 9112 3.2.2: the authority of an absolute-form target wins over the Host field.
    req = parse(head("Host: other", start=line))
    assert req.uri == line.split(" ")[1]
    assert (req.path, req.query, req.host) == (path, query, host)
    assert ("Host", "other") in req.headers


def test_options_asterisk() -> None:
    req = parse(head("Host: a", start="OPTIONS * HTTP/1.1"))
    assert (req.method, req.uri, req.path, req.query) == ("OPTIONS", "*", "*", "")


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n"])
def test_leading_empty_lines_are_tolerated(prefix: bytes) -> None:
    # RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line.
    raw = prefix + head("Host: a")
    assert scan_head(raw, LIMITS) == len(raw)
    assert parse_head(raw, LIMITS).path == "/"


def test_three_leading_empty_lines_are_refused() -> None:
    raw = b"\r\n\r\n\r\n" + head("Host: a")
    n = scan_head(raw, LIMITS)
    assert n > 0
    assert status_of(raw[:n]) == 400


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("X:v", "v"),
        ("X:   v  \t ", "v"),
        ("X:\tv\t", "v"),
        ("X: a  b\tc", "a  b\tc"),
        ("X:", ""),
        ("X:   ", ""),
        ("X: caf\xe9 \x80\xff", "caf\xe9 \x80\xff"),  # obs-text, latin-1 decoded
        ('X: "quoted" (comment) a=b;c', '"quoted" (comment) a=b;c'),
    ],
)
def test_field_value_ows_is_stripped(line: str, value: str) -> None:
    assert parse(head("Host: a", line)).headers[1] == ("X", value)


def test_trailing_ows_stripped_in_every_field() -> None:
    req = parse(head("Host: a \t", "A: 1 ", "B:2"))
    assert req.headers == [("Host", "a"), ("A", "1"), ("B", "2")]
    assert req.host == "a"


def test_field_names_keep_their_case_and_order() -> None:
    req = parse(head("HOST: a", "x-CUSTOM: 1", "X-Custom: 2"))
    assert req.headers == [("HOST", "a"), ("x-CUSTOM", "1"), ("X-Custom", "2")]
    assert req.host == "a"


@pytest.mark.parametrize(
    ("version", "expect", "result"),
    [
        ("HTTP/1.1", "100-continue", True),
        ("HTTP/1.1", "100-Continue", True),
        ("HTTP/1.1", "something-else", False),
        ("HTTP/1.0", "100-continue", False),  # RFC 9110 10.1.1: ignored in HTTP/1.0
    ],
)
def test_expect(version: str, expect: str, result: bool) -> None:
    lines = ["Host: a", "Content-Length: 3", f"Expect: {expect}"]
    req = parse(head(*lines, start=f"POST / {version}"))
    assert req.expect_continue is result


def test_upgrade_request_is_a_plain_request() -> None:
    # httptools raises HttpParserUpgrade on such a head; we serve it as a normal request.
    lines = ["Host: a", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"]
    req = parse(head(*lines, start="GET /ws HTTP/1.1"))
    assert req.path == "/ws"
    assert ("Upgrade", "websocket") in req.headers
    assert req.keep_alive is True


def test_host_forms() -> None:
    for host in ["a", "a.example:8080", "[::1]", "[::1]:9", "127.0.0.1:80", ""]:
        assert parse(head(f"Host: {host}")).host == host


def test_unusual_but_valid_target_characters() -> None:
    target = '/a{b}|c^d`e\\f"g<h>?q=[1]'
    assert parse(head("Host: a", start=f"GET {target} HTTP/1.1")).uri == target


def test_http_error_carries_status_and_reason() -> None:
    err = HttpError(431, "too big")
    assert (err.status, err.reason) == (431, "too big")
    assert str(err) == "431 too big"


def test_default_limits() -> None:
    assert Limits() == Limits(4096, 8190, 100, 8190, 0, 4096, 8192)


# -- scan_head ----------------------------------------------------------------------------


def test_scan_head_every_prefix_is_incomplete() -> None:
    raw = b"\r\n" + head(
        "Host: example.com", "User-Agent: t", "Accept: */*", start="GET /a?b HTTP/1.1"
    )
    for cut in range(len(raw)):
        assert scan_head(raw[:cut], LIMITS) == -1, cut
    assert scan_head(raw, LIMITS) == len(raw)


def test_scan_head_stops_at_the_first_empty_line() -> None:
    first = head("Host: a", "Content-Length: 4", start="POST / HTTP/1.1")
    second = head("Host: a")
    buf = bytearray(first + b"\r\n\r\n" + second)  # the body looks like an empty head
    assert scan_head(buf, LIMITS) == len(first)


def test_scan_head_accepts_bytearray() -> None:
    raw = head("Host: a")
    assert scan_head(bytearray(raw + b"GET"), LIMITS) == len(raw)


@pytest.mark.parametrize(
    "partial",
    [
        b"GET / HTTP/1.1\nHost: a",  # G1
        b"GET / HTTP/1.1\r\nHost: a\n",  # G1
        b"GET / HTTP/1.1\rHost: a",  # G2
        b"GET / HTTP/1.1\r\nX: a\r\rb",  # G2
    ],
)
def test_scan_head_refuses_bare_line_breaks_early(partial: bytes) -> None:
    # Without this, a client speaking bare-LF HTTP would wait for the header timeout.
    with pytest.raises(HttpError) as info:
        scan_head(partial, LIMITS)
    assert info.value.status == 400


def test_scan_head_keeps_a_trailing_cr() -> None:
    assert scan_head(b"GET / HTTP/1.1\r", LIMITS) == -1
    assert scan_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r", LIMITS) == -1


# -- limits (G7) --------------------------------------------------------------------------


def scan_status(buf: bytes, limits: Limits) -> int:
    with pytest.raises(HttpError) as info:
        scan_head(buf, limits)
    return info.value.status


def test_request_line_limit_boundary() -> None:
    limits = Limits(buffer_size=1 << 16, max_request_line=100)
    line = "GET /" + "a" * (100 - len("GET / HTTP/1.1")) + " HTTP/1.1"
    assert len(line) == 100
    assert parse(head("Host: a", start=line), limits).method == "GET"
    longer = line.replace("/a", "/aa")
    assert status_of(head("Host: a", start=longer), limits) == 414
    assert scan_status(head("Host: a", start=longer), limits) == 414


def test_request_line_too_long_while_incomplete() -> None:
    limits = Limits(buffer_size=1 << 16, max_request_line=100)
    line = b"GET /" + b"a" * 95
    assert len(line) == 100
    assert scan_head(line, limits) == -1
    assert scan_head(line + b"\r", limits) == -1  # its CRLF may still come
    assert scan_status(line + b"aa", limits) == 414


def test_request_line_limit_is_capped_by_buffer_size() -> None:
    limits = Limits(buffer_size=200, max_request_line=8190)
    raw = head("Host: a", start="GET /" + "a" * 300 + " HTTP/1.1")
    assert scan_status(raw, limits) == 414
    assert status_of(raw, limits) == 414
    assert scan_status(raw[:250], limits) == 414


def test_head_size_boundary() -> None:
    base = head("Host: a", "X: ")
    limits = Limits(buffer_size=200)
    fits = head("Host: a", "X: " + "v" * (200 - len(base)))
    assert len(fits) == 200
    assert parse(fits, limits).headers[1][1] == "v" * (200 - len(base))
    over = head("Host: a", "X: " + "v" * (201 - len(base)))
    assert scan_status(over, limits) == 431
    assert status_of(over, limits) == 431


def test_head_too_large_while_incomplete() -> None:
    limits = Limits(buffer_size=200)
    partial = head("Host: a")[:-2] + b"X: " + b"v" * 200
    assert scan_status(partial[:200], limits) == 431
    assert scan_head(partial[:199], limits) == -1


def test_default_buffer_size_refuses_a_5k_cookie() -> None:
    raw = head("Host: a", "Cookie: " + "c" * 5000)
    assert scan_status(raw, LIMITS) == 431
    assert parse(raw, Limits(buffer_size=8192)).headers[1][1] == "c" * 5000


def test_field_count_boundary() -> None:
    limits = Limits(buffer_size=1 << 16)
    fields = ["Host: a"] + [f"X-{i}: {i}" for i in range(99)]
    assert len(parse(head(*fields), limits).headers) == 100
    too_many = head(*fields, "X-last: 1")
    assert status_of(too_many, limits) == 431
    assert scan_status(too_many[:-2], limits) == 431  # 101 complete lines, no end yet


def test_field_count_includes_dropped_underscore_fields() -> None:
    limits = Limits(buffer_size=1 << 16, max_fields=3)
    assert status_of(head("Host: a", "A_1: x", "A_2: x", "A_3: x"), limits) == 431


def test_field_size_boundary() -> None:
    limits = Limits(buffer_size=1 << 16, max_field_size=50)
    line = "X-Long: " + "v" * (50 - len("X-Long: "))
    assert len(line) == 50
    assert parse(head("Host: a", line), limits).headers[1] == ("X-Long", "v" * 42)
    assert status_of(head("Host: a", line + "v"), limits) == 431


def test_field_too_long_while_incomplete() -> None:
    limits = Limits(buffer_size=1 << 16, max_field_size=50)
    partial = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 47
    assert len(partial) - partial.rindex(b"\n") - 1 == 50
    assert scan_head(partial + b"\r", limits) == -1  # 50 bytes and the CR: still fine
    assert scan_status(partial + b"vv", limits) == 431


def test_limit_post_with_content_length() -> None:
    limits = Limits(limit_post=100)
    assert parse(head("Host: a", "Content-Length: 100"), limits).content_length == 100
    assert status_of(head("Host: a", "Content-Length: 101"), limits) == 413
