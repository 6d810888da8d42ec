"""HTTP/1.1 request heads: httptools (llhttp) behind muleteer's strict gate.

The worker buffers bytes, calls :func:`scan_head` until a whole head is there, then
:func:`parse_head`, and reads the body itself (Content-Length, or :class:`ChunkedDecoder`).
After any HttpError it answers the status with ``Connection: close`` and parses nothing
more from that connection (S9; waitress GHSA-9298-4cf8-g4wj).

llhttp alone lets through shapes that have been used for request smuggling
(``research/reliability.md`` 1.4), so the gate runs first on the raw head and refuses them
with a precise status; httptools then parses the same bytes as a second opinion. The gate
is a few C-level passes over the whole head (``bytes.count``, two regex passes); Python
code runs once per field line, never per byte, and precise reasons are worked out only
for heads that fail.

Rules (names from ``research/reliability.md`` 1.5) and the status each one answers:

- 400: bare LF (G1), bare CR (G2), obs-fold (G3), CTL in a field value (G4), non-token
  field name or whitespace before the colon (G5), head not ending in CRLF CRLF (G6),
  CL and TE together (S1), bad or repeated Content-Length, repeated Host, Content-Type or
  Transfer-Encoding (S2), TE in HTTP/1.0, HTTP/1.1 without Host, invalid Host (S4),
  malformed request line, non-token method, "*" outside OPTIONS, authority-form outside
  CONNECT, a target with "#" or userinfo (S5), anything else httptools refuses.
- 414 / 431: request line / head, field count, field line over the limits (G7).
- 413: Content-Length over ``limit_post``.
- 501: a Transfer-Encoding ending in "chunked" with other codings before it (S3, RFC 9112
  6.1), CONNECT (no tunnelling), a token method llhttp does not know (RFC 9110 9.1).
  A Transfer-Encoding whose final coding is not "chunked" is 400 (RFC 9112 6.3).
- 505: a well-formed version other than HTTP/1.0 and HTTP/1.1 (S4).
- Dropped: field names containing "_" (S8). Trailers: validated and discarded (S7).
- Chunked bodies (S6): 400 for bad framing, 413 past ``limit_post``, 431 for a trailer
  section over ``max_trailer_size``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httptools

__all__ = [
    "ChunkedDecoder",
    "HttpError",
    "Limits",
    "RequestHead",
    "parse_head",
    "scan_head",
]


class HttpError(Exception):
    """A request that must be refused.

    `status` is the HTTP status to answer with, `reason` a short log-friendly text.
    The connection must be closed after answering (S9: never parse what follows).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits of a request (G7). The status each one answers is in the comment."""

    buffer_size: int = 4096  # whole head, leading empty lines included -> 431
    max_request_line: int = 8190  # -> 414; effective limit min(this, buffer_size)
    max_fields: int = 100  # field lines in the head -> 431
    max_field_size: int = 8190  # one field line without its CRLF -> 431
    limit_post: int = 0  # body bytes, 0 = unlimited -> 413
    max_chunk_line: int = 4096  # chunk-size line with extensions, without CRLF -> 400
    max_trailer_size: int = 8192  # trailer section -> 431 (trailers are fields, RFC 6585 5)


@dataclass(slots=True)
class RequestHead:
    """A request head that passed the gate. Strings are latin-1 decoded (WSGI native)."""

    method: str
    uri: str  # request-target exactly as sent
    path: str  # still percent-encoded; "/p" for "http://h/p?q", "*" for "*"
    query: str  # after "?", "" if none
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: list[tuple[str, str]]  # underscore names dropped (S8), values OWS-stripped
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    host: str | None  # Host field; for absolute-form the target's authority (RFC 9112 3.2.2)


# RFC 9110 5.6.2 tchar. Explicit ranges: \w or \s would match Unicode letters and
# "whitespace" such as \x85 and \xa0 in latin-1 text.
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN_RE = re.compile(_TCHAR + "+")

# Request line (RFC 9112 3): exactly one SP between the three parts. The target may hold
# printable ASCII except "#": a fragment is not part of a request-target (RFC 9112 3.2)
# and a proxy and an origin could disagree about where the path ends.
_REQUEST_LINE_RE = re.compile(rf"({_TCHAR}+) ([\x21\x22\x24-\x7e]+) (HTTP/[0-9]\.[0-9])\r\n")

# One field line, from the LF ending the previous line to the CR of its own CRLF, so that
# every match starts a line. The lookbehind and lookahead demand that this LF and CR belong
# to CRLF pairs, so a line with a bare CR or LF, or an obs-fold line (starting with SP or
# HTAB), cannot match: one match per CRLF-delimited line proves G1-G5 for the whole block.
# Name: a token without "_" (names with "_" take the slow path, S8), directly followed by
# ":" (no whitespace before the colon: CVE-2024-27982). Value: HTAB, SP, VCHAR, obs-text
# (RFC 9110 5.5: no NUL or other CTL). Leading OWS is outside the group; a value with
# trailing OWS (rare) does not match and takes the slow path, which strips it.
# Possessive quantifiers keep failing matches linear: a backtracking header regex burned
# 100% CPU on runs of spaces in waitress (CVE-2020-5236).
_FIELD_RE = re.compile(
    r"(?<=\r)\n([!#$%&'*+\-.^`|~0-9A-Za-z]+):[ \t]*+([\t\x20-\x7e\x80-\xff]*+)(?<![ \t])\r(?=\n)"
)
# The same rules for one line on its own (slow path), with "_" allowed and OWS stripped.
_FIELD_LINE_RE = re.compile(rf"({_TCHAR}+):[ \t]*+((?:[ \t]*+[\x21-\x7e\x80-\xff]++)*+)[ \t]*+")

# Host = uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986 3.2.2); empty is allowed.
_HOST_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")
_ABSOLUTE_RE = re.compile(r"([Hh][Tt][Tt][Pp][Ss]?)://([^/?]*)(.*)")
_DIGITS_RE = re.compile(r"[0-9]{1,19}")  # 19 digits always fit in a signed 64-bit int

# Fields that must appear at most once (RFC 9110 5.3: they cannot be combined as lists).
_SINGLETONS = frozenset({"host", "content-length", "content-type", "transfer-encoding"})
_SPECIAL = _SINGLETONS | {"connection", "expect"}
_NO_TOKENS: frozenset[str] = frozenset()


class _NoCallbacks:
    """httptools protocol with no callbacks: the parser only validates. Stateless, shared."""

    __slots__ = ()


_NO_CALLBACKS = _NoCallbacks()


def _skip_empty_lines(buf: bytes | bytearray) -> int:
    """Offset of the request line: up to 2 empty lines before it are ignored (RFC 9112 2.2)."""
    skip = 0
    while skip < 4 and buf.startswith(b"\r\n", skip):
        skip += 2
    return skip


def scan_head(buf: bytes | bytearray, limits: Limits) -> int:
    """Length of the complete head at the start of buf, or -1 while more bytes are needed.

    The length runs just past the first CRLF CRLF (leading empty lines included) and is
    never more than ``limits.buffer_size``. Raises HttpError 414 when no line end comes
    within the request-line limit, 431 when the head cannot fit in buffer_size or has too
    many or too long field lines, and 400 as soon as a bare LF or bare CR is seen
    (otherwise such a head would only end at a timeout).

    The status does not depend on how the bytes were split into reads: whatever buf
    holds, the fault that wins is the one that the shortest prefix of buf shows, so a
    head read at once, line by line or byte by byte gets the same answer.
    """
    skip = _skip_empty_lines(buf)
    end = buf.find(b"\r\n\r\n", skip, limits.buffer_size)
    if end >= 0:  # the usual case, inlined: a complete head without bare CR or LF
        crlf = buf.count(b"\r\n", 0, end + 4)
        if buf.count(b"\n", 0, end + 4) == crlf == buf.count(b"\r", 0, end + 4):
            # What _check_prefix(buf, end + 3, ...) finds, the limits that a read of the
            # longest incomplete prefix would have hit, without its generality.
            line_end = buf.find(b"\n", skip)
            if line_end - skip - 1 > min(limits.max_request_line, limits.buffer_size):
                raise HttpError(414, "request line too long")
            if crlf - skip // 2 - 2 > limits.max_fields:
                raise HttpError(431, "too many header fields")
            if end + 2 - line_end > limits.max_field_size + 1:
                _check_prefix(buf, end + 3, skip, limits)
            return end + 4
    n = len(buf)
    # Bare CR/LF are looked for in the head (which then has one), or in at most
    # buffer_size bytes of an incomplete one; a CR ending an incomplete head may still
    # get its LF.
    stop = end + 4 if end >= 0 else min(n, limits.buffer_size)
    crlf = buf.count(b"\r\n", 0, stop)
    open_cr = end < 0 and buf[stop - 1 : stop] == b"\r"
    if buf.count(b"\n", 0, stop) != crlf or buf.count(b"\r", 0, stop) - open_cr != crlf:
        lf = _BARE_LF_RE.search(buf, 0, stop)
        cr = _BARE_CR_RE.search(buf, 0, stop - open_cr)
        # A bare LF shows in the prefix that ends with it, a bare CR in the one after it.
        seen_lf = lf.start() + 1 if lf else stop + 1
        seen_cr = cr.start() + 2 if cr else stop + 1
        # Limits that a read ending before the bare CR/LF would already have hit win.
        _check_prefix(buf, min(seen_lf, seen_cr) - 1, skip, limits)
        if seen_lf <= seen_cr:
            raise HttpError(400, "bare LF in head")  # G1: CVE-2019-16785, CVE-2022-32214
        raise HttpError(400, "bare CR in head")  # G2: CVE-2023-30589
    _check_prefix(buf, n, skip, limits)  # incomplete (a complete head has returned)
    return -1


_BARE_LF_RE = re.compile(rb"(?<!\r)\n")
_BARE_CR_RE = re.compile(rb"\r(?!\n)")


def _check_prefix(buf: bytes | bytearray, m: int, skip: int, limits: Limits) -> None:
    """Raise 414 or 431 if a read of any prefix of buf[:m] (an incomplete head with no
    bare CR or LF) would have: the request line, the head, the field count or one field
    line is already over its limit (G7)."""
    line_limit = min(limits.max_request_line, limits.buffer_size)
    # The request line plus its CRLF must fit in line_limit + 2 bytes.
    window = skip + line_limit + 2
    line_end = buf.find(b"\n", skip, min(m, window))
    if line_end < 0:
        if m >= window:
            raise HttpError(414, "request line too long")
        # Past buffer_size, 414 or 431 depends on whether the line ends within the
        # window, at most skip + 2 bytes further: wait for them rather than guess.
        return
    if m >= limits.buffer_size:
        raise HttpError(431, "request head too large")
    if buf.count(b"\r\n", 0, m) - skip // 2 - 1 > limits.max_fields:
        raise HttpError(431, "too many header fields")
    # One field line with its CR (or a partial last one) over max_field_size + 1 bytes.
    if m - line_end - 1 > limits.max_field_size + 1:
        longest = max(map(len, bytes(buf[line_end + 1 : m]).split(b"\n")))
        if longest > limits.max_field_size + 1:
            raise HttpError(431, "header field too long")


def parse_head(head: bytes, limits: Limits) -> RequestHead:
    """Parse a head measured by :func:`scan_head`: run the gate, then httptools.

    Raises HttpError with the status to answer (rules and statuses: module docstring).
    """
    text = head.decode("latin-1")
    start = _skip_empty_lines(head) if head[:1] == b"\r" else 0
    # G6: the head ends with CRLF CRLF. "\r\n\rX" (CVE-2025-23167) has a bare CR: G2.
    if not head.endswith(b"\r\n\r\n") or len(head) - start < 4:
        raise HttpError(400, "head does not end with CRLF CRLF")
    # Field lines: the LFs minus the leading empty lines', the request line's and the
    # final empty line's. (Counting LF, not CRLF, is faster; with a bare LF the count is
    # too high and the fast field check below fails, as it must.)
    nfields = head.count(b"\n") - start // 2 - 2
    line_end = text.index("\r\n", start)
    if line_end - start > limits.max_request_line:
        raise HttpError(414, "request line too long")  # G7
    if len(head) > limits.buffer_size:
        # The effective request-line limit is min(max_request_line, buffer_size).
        if line_end - start > limits.buffer_size:
            raise HttpError(414, "request line too long")  # G7
        raise HttpError(431, "request head too large")  # G7
    if nfields > limits.max_fields:
        raise HttpError(431, "too many header fields")  # G7
    if len(head) - line_end - 6 > limits.max_field_size:  # only then can a line be too long
        for line in text[line_end + 2 : -4].split("\r\n"):
            if len(line) > limits.max_field_size:
                raise HttpError(431, "header field too long")  # G7
    # G1-G5 in two regex passes (see _REQUEST_LINE_RE and _FIELD_RE). Each field match
    # starts at an LF and ends at the CR just before the next LF, so nfields matches tile
    # the whole field block: no bare CR or LF, no obs-fold, no CTL, only token names.
    # Anything else (and underscore names, trailing OWS) takes the slow path, which
    # finds the precise reason or drops and strips.
    match = _REQUEST_LINE_RE.match(text, start)
    if match is None:
        raise HttpError(400, _request_line_problem(text, start, line_end))
    method, target, version = match.groups()
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        raise HttpError(505, "HTTP version not supported")  # S4
    fields = _FIELD_RE.findall(text, line_end + 1, len(text) - 2)
    if len(fields) != nfields:
        fields = _slow_fields(text[line_end + 2 : -4])
    req = _interpret(method, target, version, fields, limits)
    _httptools_check(head)
    return req


def _line_break_problem(text: str) -> str | None:
    """G1-G3 on a whole head (slow path): bare LF, bare CR, obs-fold."""
    crlf = text.count("\r\n")
    if text.count("\n") != crlf:
        return "bare LF in head"  # G1: CVE-2019-16785 (waitress), CVE-2022-32214 (llhttp)
    if text.count("\r") != crlf:
        return "bare CR in head"  # G2: CVE-2023-30589 (llhttp)
    if "\n " in text or "\n\t" in text:
        return "obs-fold"  # G3: RFC 9112 5.2, CVE-2022-32215 (llhttp)
    return None


def _request_line_problem(text: str, start: int, line_end: int) -> str:
    """Why the request line failed the fast regex (slow path, only for bad requests)."""
    problem = _line_break_problem(text)
    if problem is not None:
        return problem
    parts = text[start:line_end].split(" ")
    if len(parts) != 3:
        return "malformed request line"  # RFC 9112 3: exactly one SP between parts
    method, target, version = parts
    if not _TOKEN_RE.fullmatch(method):
        return "invalid method"  # S5: the method is a token (RFC 9110 9.1)
    if "#" in target:
        return "fragment in request target"
    if re.fullmatch(r"HTTP/[0-9]\.[0-9]", version) is None:
        return "malformed HTTP version"
    return "invalid character in request target"


def _slow_fields(block: str) -> list[tuple[str, str]]:
    """Field lines that the fast regex did not all match: drop underscore names, or raise."""
    problem = _line_break_problem(block)
    if problem is not None:
        raise HttpError(400, problem)
    fields = []
    for line in block.split("\r\n"):
        match = _FIELD_LINE_RE.fullmatch(line)
        if match is None:
            raise HttpError(400, _field_problem(line))
        name, value = match.groups()
        # S8: underscore names are dropped, as nginx and gunicorn do by default: in
        # environ "Content_Length" and "Content-Length" would both be HTTP_CONTENT_LENGTH.
        if "_" not in name:
            fields.append((name, value))
    return fields


def _field_problem(line: str) -> str:
    """Why a field line is invalid."""
    if line[:1] in (" ", "\t"):
        return "obs-fold"  # G3: RFC 9112 5.2, CVE-2022-32215 (llhttp)
    name, colon, _ = line.partition(":")
    if not colon:
        return "field line without colon"
    if not name:
        return "empty field name"  # RFC 9110 5.1: field-name = token, 1 char at least
    if name[-1] in " \t":
        return "whitespace before colon"  # G5: CVE-2024-27982, RFC 9112 5.1
    if not _TOKEN_RE.fullmatch(name):
        return "invalid field name"  # G5: RFC 9110 5.1
    return "control character in field value"  # G4: RFC 9110 5.5


def _tokens(values: list[str]) -> set[str]:
    """Lower-cased members of comma-separated token lists (Connection, Expect)."""
    if len(values) == 1 and "," not in values[0]:
        return {values[0].lower()}  # the usual case; values are already OWS-stripped
    return {t.strip(" \t").lower() for v in values for t in v.split(",")}


def _interpret(
    method: str, target: str, version: str, fields: list[tuple[str, str]], limits: Limits
) -> RequestHead:
    seen: dict[str, str] = {}
    connection: list[str] = []
    expect: list[str] = []
    for name, value in fields:
        lname = name.lower()
        if lname in _SPECIAL:
            if lname == "connection":
                connection.append(value)
            elif lname == "expect":
                expect.append(value)
            elif lname in seen:
                raise HttpError(400, f"duplicate {name}")  # S2: RFC 9110 5.3
            else:
                seen[lname] = value

    http11 = version == "HTTP/1.1"
    host = seen.get("host")
    if host is not None and not _HOST_RE.fullmatch(host):
        raise HttpError(400, "invalid Host")  # RFC 9112 3.2: 400 for an invalid Host
    if http11 and host is None:
        raise HttpError(400, "missing Host")  # S4: RFC 9112 3.2
    if target[0] == "/" and method != "CONNECT":  # origin-form, the usual case
        path, _, query = target.partition("?")
    else:
        path, query, host = _target(method, target, host)

    te = seen.get("transfer-encoding")
    cl = seen.get("content-length")
    content_length = None
    if te is not None:
        if not http11:
            raise HttpError(400, "Transfer-Encoding in HTTP/1.0")  # S4: RFC 9112 6.1
        if cl is not None:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")  # S1: 9112 6.1
        if te.lower() != "chunked":
            # S3: only a lone "chunked" is understood. Lenient TE parsing: CVE-2024-1135,
            # CVE-2024-6827, CVE-2019-16786/16789. RFC 9112 6.3: when chunked is not the
            # final coding the body length is unknowable -> 400 and close; otherwise a
            # coding we do not implement (gzip, chunked) -> 501 (6.1).
            if te.rsplit(",", 1)[-1].strip(" \t").lower() != "chunked":
                raise HttpError(400, "Transfer-Encoding without chunked as the final coding")
            raise HttpError(501, "unsupported Transfer-Encoding")
    elif cl is not None:
        # S2: 1*DIGIT only. int() would take "+5", " 5", "5_0"; lists "5, 5" are refused
        # even when equal (CVE-2019-16792, CVE-2022-24761).
        if not _DIGITS_RE.fullmatch(cl):
            raise HttpError(400, "invalid Content-Length")
        content_length = int(cl)
        if 0 < limits.limit_post < content_length:
            raise HttpError(413, "request body too large")

    tokens = _tokens(connection) if connection else _NO_TOKENS
    keep_alive = "close" not in tokens and (http11 or "keep-alive" in tokens)
    # RFC 9110 10.1.1: a 100-continue expectation in HTTP/1.0 is ignored.
    expect_continue = http11 and bool(expect) and "100-continue" in _tokens(expect)
    return RequestHead(
        method,
        target,
        path,
        query,
        version,
        fields,
        content_length,
        te is not None,
        keep_alive,
        expect_continue,
        host,
    )


def _target(method: str, target: str, host: str | None) -> tuple[str, str, str | None]:
    """(path, query, host) of a request-target, checking its form (S5, RFC 9112 3.2)."""
    if method == "CONNECT":
        raise HttpError(501, "CONNECT not supported")  # no tunnelling
    if target[0] == "/":  # origin-form
        path, _, query = target.partition("?")
        return path, query, host
    if target == "*":  # asterisk-form, only for a server-wide OPTIONS
        if method != "OPTIONS":
            raise HttpError(400, "'*' target outside OPTIONS")
        return "*", "", host
    match = _ABSOLUTE_RE.fullmatch(target)
    if match is None:  # authority-form or anything else (only CONNECT may use authority)
        raise HttpError(400, "invalid request target form")
    authority, rest = match.group(2), match.group(3)
    # RFC 9110 4.2.4: userinfo in an http(s) URI is treated as an error.
    if not authority or "@" in authority or not _HOST_RE.fullmatch(authority):
        raise HttpError(400, "invalid authority in request target")
    path, _, query = rest.partition("?")
    # RFC 9112 3.2.2: the target's authority wins over the Host field.
    return path or "/", query, authority


def _httptools_check(head: bytes) -> None:
    """Second opinion: llhttp (strict, no leniencies) must accept what the gate accepted."""
    parser = httptools.HttpRequestParser(_NO_CALLBACKS)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # an Upgrade (or websocket) head is served as a plain request
    except httptools.HttpParserInvalidMethodError:
        # The gate checked it is a token, so llhttp just does not know it (RFC 9110 9.1).
        raise HttpError(501, "unknown method") from None
    except httptools.HttpParserError as exc:
        raise HttpError(400, f"rejected by httptools: {exc}") from None


# -- chunked bodies -----------------------------------------------------------------------

# chunk = chunk-size [ chunk-ext ] CRLF (RFC 9112 7.1). Size: 1-16 hex digits, nothing else
# (int(x, 16) would take "0x1", "+1", " 1": CVE-2022-24761). Extensions: ";name[=value]"
# with a token or quoted-string value and, unlike the RFC's BWS, no whitespace: lenient
# chunk lines are how CVE-2025-43859 (h11) smuggled.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*+"'
_TCHAR_B = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;%s++(?:=(?:%s++|%s))?+)*+\r\n" % (_TCHAR_B, _TCHAR_B, _QUOTED)
)
_TRAILER_RE = re.compile(_TCHAR_B + rb"+:[\t\x20-\x7e\x80-\xff]*\r\n")

_SIZE, _DATA, _DATA_CR, _DATA_LF, _TRAILER, _DONE = range(6)
# Framing overhead allowed per chunk for free; beyond it, extension bytes must be paid for
# by chunk data or the body is refused (the Go CVE-2023-39326 pattern: 1-byte chunks
# with 4 KiB of extensions each would let a client send gigabytes under limit_post).
_FREE_OVERHEAD = 16
_MAX_EXCESS = 16 * 1024


class ChunkedDecoder:
    """Incremental strict decoder of a chunked body (RFC 9112 7.1).

    Trailer fields are checked like head fields and thrown away (S7: they must never
    override Host, Content-Length or anything else the app sees).
    """

    def __init__(self, limits: Limits) -> None:
        self.done = False
        self.size = 0
        self._limits = limits
        self._state = _SIZE
        self._left = 0  # data bytes left in the current chunk
        self._line = bytearray()  # partial chunk-size or trailer line
        self._trailer_size = 0
        self._excess = 0

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
        """Decode as much of data as possible: (decoded body bytes, input bytes consumed).

        Bytes after the end of the message are not consumed. Partial lines are kept
        internally (and count as consumed). Raises HttpError 400 on bad framing, 413 past
        ``limit_post``, 431 when the trailer section exceeds ``max_trailer_size``.
        """
        buf = data if isinstance(data, bytes | bytearray) else bytes(data)
        out: list[bytes] = []
        pos, n = 0, len(buf)
        while pos < n and self._state != _DONE:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_CR
            elif state in (_DATA_CR, _DATA_LF):
                # The CRLF after chunk data is required, byte by byte since it may be split.
                if buf[pos] != (13 if state == _DATA_CR else 10):
                    raise HttpError(400, "missing CRLF after chunk data")
                pos += 1
                self._state = _DATA_LF if state == _DATA_CR else _SIZE
            else:
                pos = self._feed_line(buf, pos)
        return b"".join(out), pos

    def _feed_line(self, buf: bytes | bytearray, pos: int) -> int:
        """Collect one chunk-size or trailer line; returns the new input position."""
        in_trailer = self._state == _TRAILER
        cap = (
            self._limits.max_trailer_size - self._trailer_size
            if in_trailer
            else self._limits.max_chunk_line + 2
        )
        # The whole line, CRLF included, must fit in cap bytes.
        room = cap - len(self._line)
        lf = buf.find(b"\n", pos, pos + room)
        if lf < 0:
            if len(buf) - pos >= room:
                if in_trailer:
                    raise HttpError(431, "trailer section too large")
                raise HttpError(400, "chunk line too long")
            self._line += buf[pos:]
            return len(buf)
        self._line += buf[pos : lf + 1]
        line = bytes(self._line)
        self._line.clear()
        if in_trailer:
            self._trailer_line(line)
        else:
            self._size_line(line)
        return lf + 1

    def _size_line(self, line: bytes) -> None:
        match = _CHUNK_LINE_RE.fullmatch(line)
        if match is None:
            raise HttpError(400, "invalid chunk size line")
        size = int(match.group(1), 16)
        limit = self._limits.limit_post
        if 0 < limit < self.size + size:
            raise HttpError(413, "request body too large")
        self.size += size
        # Overhead of this chunk: its size line and the CRLF after its data.
        self._excess = max(0, self._excess + len(line) + 2 - _FREE_OVERHEAD - size)
        if self._excess > _MAX_EXCESS:
            raise HttpError(400, "too much chunk framing overhead")
        if size:
            self._left = size
            self._state = _DATA
        else:
            self._state = _TRAILER  # last-chunk

    def _trailer_line(self, line: bytes) -> None:
        self._trailer_size += len(line)
        if line == b"\r\n":  # end of the trailer section, and of the message
            self._state = _DONE
            self.done = True
        elif _TRAILER_RE.fullmatch(line) is None:
            # Same rules as head fields: token name, no whitespace before the colon, no
            # obs-fold (the line would start with SP/HTAB), no CTLs, CRLF only.
            raise HttpError(400, "invalid trailer field")
