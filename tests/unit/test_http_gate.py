"""The strict gate: one case per rule (G1-G6, S1-S8), each with its exact status.

Each row names where the rule comes from. Heads are given as raw bytes so that every
CR, LF and control byte is visible.
"""

from __future__ import annotations

import pytest

from muleteer.http import HttpError, Limits, parse_head, scan_head

LIMITS = Limits()
H = b"Host: a"


def status_of(raw: bytes) -> int:
    with pytest.raises(HttpError) as info:
        parse_head(raw, LIMITS)
    return info.value.status


def get(*fields: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


REFUSED: list[tuple[str, bytes, int, str]] = [
    # G1: bare LF as a line end (CVE-2019-16785 waitress, CVE-2022-32214 llhttp)
    ("G1 bare LF after request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare lf in head"),
    ("G1 bare LF after field", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400, "bare lf in head"),
    ("G1 LF LF end", b"GET / HTTP/1.1\r\nHost: a\n\n", 400, "head does not end with crlf crlf"),
    ("G1 CRLF LF end", b"GET / HTTP/1.1\r\nHost: a\r\n\n\r\n\r\n", 400, "bare lf in head"),
    ("G1 LF in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n", 400, "bare lf in head"),
    # G2: CR not followed by LF (CVE-2023-30589 llhttp)
    (
        "G2 bare CR between fields",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        400,
        "bare cr in head",
    ),
    ("G2 CR CR LF", b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", 400, "bare cr in head"),
    ("G2 CR in request line", b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare cr in head"),
    ("G2 CR in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, "bare cr in head"),
    # G3: obs-fold (RFC 9112 5.2, CVE-2022-32215 llhttp)
    ("G3 obs-fold SP", get(H, b"X: a", b" b"), 400, "obs-fold"),
    ("G3 obs-fold HTAB", get(H, b"X: a", b"\tb"), 400, "obs-fold"),
    ("G3 folded Transfer-Encoding", get(H, b"Transfer-Encoding:", b" chunked"), 400, "obs-fold"),
    ("G3 whitespace before first field", get(b" Host: a"), 400, "obs-fold"),
    # G4: NUL / CTL in a field value (RFC 9110 5.5; gunicorn, h11 accepted BEL and DEL)
    ("G4 NUL", get(H, b"X: a\x00b"), 400, "control character in field value"),
    ("G4 BEL", get(H, b"X: a\x07b"), 400, "control character in field value"),
    ("G4 DEL", get(H, b"X: a\x7fb"), 400, "control character in field value"),
    ("G4 ESC", get(H, b"X: \x1b[31m"), 400, "control character in field value"),
    ("G4 VT", get(H, b"X: a\x0bb"), 400, "control character in field value"),
    ("G4 FF", get(H, b"X: a\x0cb"), 400, "control character in field value"),
    (
        "G4 CTL in Transfer-Encoding",
        get(H, b"Transfer-Encoding: chunked\x01"),
        400,
        "control character in field value",
    ),
    ("G4 CTL in Host", get(b"Host: a\x01"), 400, "control character in field value"),
    # G5: field names are tokens, no whitespace before the colon (CVE-2024-27982 llhttp)
    ("G5 SP before colon", get(H, b"X : a"), 400, "whitespace before colon"),
    (
        "G5 TE with SP before colon",
        get(H, b"Transfer-Encoding : chunked"),
        400,
        "whitespace before colon",
    ),
    (
        "G5 CL with HTAB before colon",
        get(H, b"Content-Length\t: 1"),
        400,
        "whitespace before colon",
    ),
    ("G5 space in name", get(H, b"X Y: a"), 400, "invalid field name"),
    ("G5 empty name", get(H, b": a"), 400, "empty field name"),
    ("G5 no colon", get(H, b"JustText"), 400, "field line without colon"),
    ("G5 non-token char", get(H, b"X@Y: a"), 400, "invalid field name"),
    ("G5 separator in name", get(H, b"(X): a"), 400, "invalid field name"),
    ("G5 non-ASCII name", get(H, b"X\xe9: a"), 400, "invalid field name"),
    ("G5 NUL in name", get(H, b"X\x00: a"), 400, "invalid field name"),
    # G6: the head ends with exactly CRLF CRLF (CVE-2025-23167 llhttp: "\r\n\rX")
    ("G6 CRLF CR X", b"GET / HTTP/1.1\r\nHost: a\r\n\rX: y\r\n\r\n", 400, "bare cr in head"),
    (
        "G6 no final empty line",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        400,
        "head does not end with crlf crlf",
    ),
    ("G6 not even one line", b"GET / HTTP/1.1", 400, "head does not end with crlf crlf"),
    ("G6 empty", b"", 400, "head does not end with crlf crlf"),
    ("G6 only empty lines", b"\r\n\r\n", 400, "head does not end with crlf crlf"),
    # S1: Content-Length and Transfer-Encoding together (RFC 9112 6.1; CL.TE and TE.CL)
    (
        "S1 CL.TE",
        get(H, b"Content-Length: 4", b"Transfer-Encoding: chunked"),
        400,
        "both content-length and transfer-encoding",
    ),
    (
        "S1 TE.CL",
        get(H, b"Transfer-Encoding: chunked", b"Content-Length: 4"),
        400,
        "both content-length and transfer-encoding",
    ),
    (
        "S1 CL with unknown TE",
        get(H, b"Content-Length: 4", b"Transfer-Encoding: gzip"),
        400,
        "both content-length and transfer-encoding",
    ),
    # S2: Content-Length is one 1*DIGIT field (CVE-2019-16792, CVE-2022-24761)
    ("S2 list form", get(H, b"Content-Length: 5, 5"), 400, "invalid content-length"),
    ("S2 list form no space", get(H, b"Content-Length: 5,5"), 400, "invalid content-length"),
    ("S2 plus sign", get(H, b"Content-Length: +5"), 400, "invalid content-length"),
    ("S2 minus sign", get(H, b"Content-Length: -5"), 400, "invalid content-length"),
    ("S2 minus zero", get(H, b"Content-Length: -0"), 400, "invalid content-length"),
    ("S2 hex", get(H, b"Content-Length: 0x5"), 400, "invalid content-length"),
    ("S2 underscore", get(H, b"Content-Length: 5_0"), 400, "invalid content-length"),
    ("S2 inner space", get(H, b"Content-Length: 5 0"), 400, "invalid content-length"),
    ("S2 empty", get(H, b"Content-Length:"), 400, "invalid content-length"),
    ("S2 20 digits", get(H, b"Content-Length: " + b"1" * 20), 400, "invalid content-length"),
    ("S2 non-ASCII digit", get(H, b"Content-Length: \xb2"), 400, "invalid content-length"),
    (
        "S2 duplicate equal",
        get(H, b"Content-Length: 5", b"Content-Length: 5"),
        400,
        "duplicate content-length",
    ),
    (
        "S2 duplicate differing",
        get(H, b"Content-Length: 5", b"content-length: 6"),
        400,
        "duplicate content-length",
    ),
    # S2: singleton fields repeated (RFC 9110 5.3; gunicorn 041/042, httptools accepts Host)
    ("S2 duplicate Host", get(b"Host: a", b"Host: b"), 400, "duplicate host"),
    ("S2 duplicate Host equal", get(b"Host: a", b"HOST: a"), 400, "duplicate host"),
    (
        "S2 duplicate Content-Type",
        get(H, b"Content-Type: a/b", b"Content-Type: c/d"),
        400,
        "duplicate content-type",
    ),
    (
        "S2/S3 TE chunked then identity",
        get(H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"),
        400,
        "duplicate transfer-encoding",
    ),
    (
        "S2/S3 TE chunked twice",
        get(H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
        400,
        "duplicate transfer-encoding",
    ),
    # S3: Transfer-Encoding is exactly "chunked" (CVE-2024-1135, CVE-2024-6827 gunicorn,
    # CVE-2019-16786/16789 waitress); 400 when chunked is not the final coding (RFC 9112
    # 6.3 item 4: a MUST), 501 for a coding we do not implement before it (RFC 9112 6.1)
    (
        "S3 gzip",
        get(H, b"Transfer-Encoding: gzip"),
        400,
        "transfer-encoding without chunked as the final coding",
    ),
    (
        "S3 chunked, gzip",
        get(H, b"Transfer-Encoding: chunked, gzip"),
        400,
        "transfer-encoding without chunked as the final coding",
    ),
    (
        "S3 gzip, chunked",
        get(H, b"Transfer-Encoding: gzip, chunked"),
        501,
        "unsupported transfer-encoding",
    ),
    (
        "S3 leading comma",
        get(H, b"Transfer-Encoding: ,chunked"),
        501,
        "unsupported transfer-encoding",
    ),
    (
        "S3 trailing comma",
        get(H, b"Transfer-Encoding: chunked,"),
        400,
        "transfer-encoding without chunked as the final coding",
    ),
    (
        "S3 identity",
        get(H, b"Transfer-Encoding: identity"),
        400,
        "transfer-encoding without chunked as the final coding",
    ),
    (
        "S3 empty",
        get(H, b"Transfer-Encoding:"),
        400,
        "transfer-encoding without chunked as the final coding",
    ),
    (
        "S3 chunked with parameter",
        get(H, b"Transfer-Encoding: chunked;q=1"),
        400,
        "transfer-encoding without chunked as the final coding",
    ),
    (
        "S3 quoted",
        get(H, b'Transfer-Encoding: "chunked"'),
        400,
        "transfer-encoding without chunked as the final coding",
    ),
    (
        "S3 xchunked",
        get(H, b"Transfer-Encoding: xchunked"),
        400,
        "transfer-encoding without chunked as the final coding",
    ),
    (
        "S3 chunked with inner HTAB",
        get(H, b"Transfer-Encoding: chun\tked"),
        400,
        "transfer-encoding without chunked as the final coding",
    ),
    # S4: versions (RFC 9112 2.3), TE in HTTP/1.0 and Host in HTTP/1.1 (RFC 9112 3.2, 6.1)
    ("S4 HTTP/2.0", get(H, line=b"GET / HTTP/2.0"), 505, "http version not supported"),
    ("S4 HTTP/1.2", get(H, line=b"GET / HTTP/1.2"), 505, "http version not supported"),
    ("S4 HTTP/0.9 style", get(H, line=b"GET / HTTP/0.9"), 505, "http version not supported"),
    ("S4 HTTP/1.10", get(H, line=b"GET / HTTP/1.10"), 400, "malformed http version"),
    ("S4 lower-case version", get(H, line=b"GET / http/1.1"), 400, "malformed http version"),
    ("S4 RTSP", get(H, line=b"GET / RTSP/1.0"), 400, "malformed http version"),
    ("S4 no version", get(H, line=b"GET /"), 400, "malformed request line"),
    ("S4 HTTP/1.1 without Host", get(b"X: a"), 400, "missing host"),
    (
        "S4 chunked in HTTP/1.0",
        get(b"Transfer-Encoding: chunked", line=b"POST / HTTP/1.0"),
        400,
        "transfer-encoding in http/1.0",
    ),
    ("S4 invalid Host (space)", get(b"Host: a b"), 400, "invalid host"),
    ("S4 invalid Host (path)", get(b"Host: a/b"), 400, "invalid host"),
    ("S4 invalid Host (userinfo)", get(b"Host: u@a"), 400, "invalid host"),
    # S5: method token and target forms (RFC 9112 3.1, 3.2; RFC 9110 9.1)
    ("S5 GET *", get(H, line=b"GET * HTTP/1.1"), 400, "'*' target outside options"),
    ("S5 CONNECT", get(H, line=b"CONNECT a:443 HTTP/1.1"), 501, "connect not supported"),
    ("S5 CONNECT origin-form", get(H, line=b"CONNECT / HTTP/1.1"), 501, "connect not supported"),
    (
        "S5 authority-form outside CONNECT",
        get(H, line=b"GET a:443 HTTP/1.1"),
        400,
        "invalid request target form",
    ),
    ("S5 relative target", get(H, line=b"GET a/b HTTP/1.1"), 400, "invalid request target form"),
    ("S5 other scheme", get(H, line=b"GET ftp://a/ HTTP/1.1"), 400, "invalid request target form"),
    (
        "S5 empty authority",
        get(H, line=b"GET http:///p HTTP/1.1"),
        400,
        "invalid authority in request target",
    ),
    (
        "S5 userinfo",
        get(H, line=b"GET http://u:p@a/ HTTP/1.1"),
        400,
        "invalid authority in request target",
    ),
    ("S5 fragment", get(H, line=b"GET /a#b HTTP/1.1"), 400, "fragment in request target"),
    (
        "S5 DEL in target",
        get(H, line=b"GET /\x7f HTTP/1.1"),
        400,
        "invalid character in request target",
    ),
    (
        "S5 non-ASCII target",
        get(H, line=b"GET /caf\xc3\xa9 HTTP/1.1"),
        400,
        "invalid character in request target",
    ),
    ("S5 NUL in method", get(H, line=b"GET\x00PROXY / HTTP/1.1"), 400, "invalid method"),
    ("S5 non-token method", get(H, line=b"G@T / HTTP/1.1"), 400, "invalid method"),
    ("S5 double SP", get(H, line=b"GET  / HTTP/1.1"), 400, "malformed request line"),
    ("S5 HTAB separator", get(H, line=b"GET\t/ HTTP/1.1"), 400, "malformed request line"),
    ("S5 trailing SP", get(H, line=b"GET / HTTP/1.1 "), 400, "malformed request line"),
    ("S5 four parts", get(H, line=b"GET / x HTTP/1.1"), 400, "malformed request line"),
    ("S5 empty request line", get(H, line=b""), 400, "malformed request line"),
    # llhttp's method list: a token it does not know is "not implemented" (RFC 9110 9.1)
    ("S5 unknown method", get(H, line=b"FOO / HTTP/1.1"), 501, "unknown method"),
    ("S5 lower-case method", get(H, line=b"get / HTTP/1.1"), 501, "unknown method"),
]


@pytest.mark.parametrize(
    ("raw", "status", "reason"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused(raw: bytes, status: int, reason: str) -> None:
    # The reason proves the head was refused by the rule under test, not by another one.
    with pytest.raises(HttpError) as info:
        parse_head(raw, LIMITS)
    assert (info.value.status, info.value.reason.lower()) == (status, reason)


@pytest.mark.parametrize(("raw", "status"), [r[1:3] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_through_scan_head(raw: bytes, status: int) -> None:
    """The worker's path: scan_head, then parse_head on what it measured."""
    try:
        n = scan_head(raw, LIMITS)
    except HttpError as exc:
        assert exc.status == 400  # bare CR/LF is refused before the head is complete
        return
    if n < 0:  # no CRLF CRLF (after the tolerated empty lines): the worker keeps waiting
        assert raw in (b"GET / HTTP/1.1\r\nHost: a\r\n", b"GET / HTTP/1.1", b"", b"\r\n\r\n")
        return
    assert status_of(raw[:n]) == status


def test_http_error_reason_names_the_rule() -> None:
    with pytest.raises(HttpError, match="bare LF"):
        parse_head(b"GET / HTTP/1.1\nHost: a\r\n\r\n", LIMITS)
    with pytest.raises(HttpError, match="whitespace before colon"):
        parse_head(get(H, b"Transfer-Encoding : chunked"), LIMITS)
    with pytest.raises(HttpError, match="obs-fold"):
        parse_head(get(H, b"X: a", b" b"), LIMITS)
    with pytest.raises(HttpError, match="control character"):
        parse_head(get(H, b"X: \x07"), LIMITS)


# -- accepted shapes next to the refused ones ----------------------------------------------


def test_htab_in_value_is_allowed() -> None:
    # G4 allows HTAB (RFC 9110 5.5 field-vchar / SP / HTAB)
    assert parse_head(get(H, b"X: a\tb"), LIMITS).headers[1] == ("X", "a\tb")


def test_content_length_with_ows_is_accepted() -> None:
    # OWS around a field value is not part of it (RFC 9110 5.5)
    assert parse_head(get(H, b"Content-Length: \t 5 \t"), LIMITS).content_length == 5


def test_options_star_is_allowed() -> None:
    assert parse_head(get(H, line=b"OPTIONS * HTTP/1.1"), LIMITS).path == "*"


def test_known_extension_methods_are_allowed() -> None:
    for method in [b"PURGE", b"PROPFIND", b"PATCH", b"DELETE", b"HEAD"]:
        assert parse_head(get(H, line=method + b" / HTTP/1.1"), LIMITS).method == method.decode()


# -- S8: underscore names are dropped ----------------------------------------------------


def test_underscore_names_are_dropped() -> None:
    req = parse_head(get(H, b"X_Forwarded_For: 1.2.3.4", b"X-Real: 1"), LIMITS)
    assert req.headers == [("Host", "a"), ("X-Real", "1")]


def test_underscore_content_length_is_not_framing() -> None:
    # "Content_Length" must never become CONTENT_LENGTH (WSGI environ collision)
    req = parse_head(get(H, b"Content_Length: 5"), LIMITS)
    assert req.content_length is None
    assert req.headers == [("Host", "a")]


def test_underscore_does_not_hide_a_duplicate() -> None:
    # With both present, only Content-Length counts: no "duplicate" and no confusion.
    req = parse_head(get(H, b"Content-Length: 3", b"Content_Length: 99"), LIMITS)
    assert req.content_length == 3
    assert req.headers == [("Host", "a"), ("Content-Length", "3")]


def test_underscore_transfer_encoding_is_not_framing() -> None:
    req = parse_head(get(H, b"Transfer_Encoding: chunked", b"Content-Length: 2"), LIMITS)
    assert (req.chunked, req.content_length) == (False, 2)


def test_underscore_host_is_not_host() -> None:
    assert status_of(get(b"Ho_st: a")) == 400  # HTTP/1.1 without Host


def test_underscore_connection_is_ignored() -> None:
    assert parse_head(get(H, b"Connection_: close"), LIMITS).keep_alive is True


def test_invalid_underscore_line_is_still_refused() -> None:
    assert status_of(get(H, b"X_Y: a\x00")) == 400
    assert status_of(get(H, b"X_Y : a")) == 400


# -- S7 lives in test_http_chunked.py (trailers); S6 too (chunk sizes). ---------------


def test_limit_post_413_only_after_framing_is_valid() -> None:
    limits = Limits(limit_post=10)
    with pytest.raises(HttpError) as info:
        parse_head(get(H, b"Content-Length: 11"), limits)
    assert info.value.status == 413
    with pytest.raises(HttpError) as info:
        parse_head(get(H, b"Content-Length: +11"), limits)
    assert info.value.status == 400
