"""Properties of the HTTP layer (hypothesis, derandomized): round trip, split invariance,
totality with a time bound, pipelining, and h11 as a differential oracle."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muleteer.http import ChunkedDecoder, HttpError, Limits, RequestHead, parse_head, scan_head

LIMITS = Limits(buffer_size=16384)
FAST = settings(derandomize=True, max_examples=150, deadline=None)
SLOW = settings(
    derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

TCHAR_NO_UNDERSCORE = "!#$%&'*+-.^`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FRAMING = {"host", "content-length", "transfer-encoding", "content-type", "connection", "expect"}
VALUE_CHARS = "".join(map(chr, [*range(0x21, 0x7F), *range(0x80, 0x100)]))
PATH_CHARS = "abcdXYZ0129-._~%!$&'()*+,;=:@/"

names = st.text(TCHAR_NO_UNDERSCORE, min_size=1, max_size=16).filter(
    lambda n: n.lower() not in FRAMING
)
values = st.text(VALUE_CHARS + " \t", max_size=30).map(lambda v: v.strip(" \t"))
targets = st.builds(
    lambda path, query: "/" + path + ("" if query is None else "?" + query),
    st.text(PATH_CHARS, max_size=30),
    st.none() | st.text(PATH_CHARS + "?", max_size=20),
)
hosts = st.from_regex(r"\A[a-z0-9.-]{0,20}(:[0-9]{1,5})?\Z")


@dataclass
class Request:
    method: str
    target: str
    host: str
    fields: list[tuple[str, str]]
    body: bytes
    chunks: list[int] | None  # None: Content-Length framing; else chunk sizes
    leading: int  # empty lines before the request line

    def head_fields(self) -> list[tuple[str, str]]:
        framing = (
            ("Content-Length", str(len(self.body)))
            if self.chunks is None
            else ("Transfer-Encoding", "chunked")
        )
        return [("Host", self.host), *self.fields, framing]

    def head(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in self.head_fields()]
        return b"\r\n" * self.leading + "\r\n".join([*lines, "", ""]).encode("latin-1")

    def encoded_body(self) -> bytes:
        if self.chunks is None:
            return self.body
        out, pos = [], 0
        for size in self.chunks:
            out.append(b"%x\r\n%s\r\n" % (size, self.body[pos : pos + size]))
            pos += size
        return b"".join(out) + b"0\r\n\r\n"

    def wire(self) -> bytes:
        return self.head() + self.encoded_body()


@st.composite
def requests(draw: st.DrawFn) -> Request:
    body = draw(st.binary(max_size=300))
    chunks: list[int] | None = None
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
        edges = [0, *cuts, len(body)]
        chunks = [b - a for a, b in itertools.pairwise(edges) if b > a]
    return Request(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])),
        target=draw(targets),
        host=draw(hosts),
        fields=draw(st.lists(st.tuples(names, values), max_size=8)),
        body=body,
        chunks=chunks,
        leading=draw(st.integers(0, 2)),
    )


def read_one(buf: bytes) -> tuple[RequestHead, bytes, int]:
    """What the worker does: head, then body by its framing. (head, body, bytes used)."""
    n = scan_head(buf, LIMITS)
    assert n > 0
    req = parse_head(buf[:n], LIMITS)
    if req.chunked:
        body, used = ChunkedDecoder(LIMITS).feed(buf[n:])
        return req, body, n + used
    length = req.content_length or 0
    return req, buf[n : n + length], n + length


@FAST
@given(requests())
def test_round_trip(r: Request) -> None:
    wire = r.wire()
    req, body, used = read_one(wire + b"GET / HTTP/1.1\r\n")  # plus the start of another
    assert (req.method, req.uri, req.version) == (r.method, r.target, "HTTP/1.1")
    assert req.path + ("?" + req.query if "?" in r.target else "") == r.target
    assert req.headers == r.head_fields()
    assert req.host == r.host
    assert req.chunked is (r.chunks is not None)
    assert body == r.body
    assert used == len(wire)


@FAST
@given(requests(), st.lists(st.integers(0, 2000), max_size=6))
def test_split_invariance(r: Request, cuts: list[int]) -> None:
    """Feeding the bytes in any pieces gives what feeding them at once gives."""
    wire = r.wire()
    edges = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    pieces = [wire[a:b] for a, b in itertools.pairwise(edges)]
    buf, req, n = b"", None, -1
    decoder, body, used = None, b"", 0
    for piece in pieces:
        if req is None:
            buf += piece
            n = scan_head(buf, LIMITS)
            if n < 0:
                continue
            req = parse_head(buf[:n], LIMITS)
            piece = buf[n:]
            decoder = ChunkedDecoder(LIMITS) if req.chunked else None
        if decoder is not None:
            out, k = decoder.feed(piece)
            body += out
            used += k
        else:
            body += piece
            used += len(piece)
    assert req is not None
    assert n == len(r.head())
    assert req.headers == r.head_fields()
    assert body == r.body
    assert n + used == len(wire)
    if decoder is not None:
        assert decoder.done


@FAST
@given(st.lists(requests(), min_size=1, max_size=5))
def test_pipelined_requests(rs: list[Request]) -> None:
    stream = b"".join(r.wire() for r in rs)
    pos, seen = 0, []
    while pos < len(stream):
        req, body, used = read_one(stream[pos:])
        seen.append((req.uri, body))
        pos += used
    assert seen == [(r.target, r.body) for r in rs]


def bounded(data: bytes) -> None:
    """Runs parse_head/scan_head/ChunkedDecoder on data: only HttpError may escape, and
    the work stays under 10 ms per KiB (best of 3, to ignore scheduler noise)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for call in (
            lambda: parse_head(data, LIMITS),
            lambda: scan_head(data, LIMITS),
            lambda: ChunkedDecoder(LIMITS).feed(data),
        ):
            try:
                call()
            except HttpError as exc:
                assert exc.status in (400, 413, 414, 431, 501, 505)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.010 * max(1.0, len(data) / 1024)


@SLOW
@given(st.binary(max_size=4096))
def test_totality_on_random_bytes(data: bytes) -> None:
    bounded(data)


INTERESTING = [b"\r", b"\n", b"\r\n", b" ", b"\t", b"\x00", b"\x7f", b":", b",", b"_", b"\xff"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid head with a few bytes inserted, replaced or deleted."""
    data = bytearray(draw(requests()).head())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["insert", "replace", "delete"]))
        blob = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=3))
        if what == "insert":
            data[pos:pos] = blob
        elif what == "replace":
            data[pos : pos + len(blob)] = blob
        else:
            del data[pos : pos + 1]
    return bytes(data)


def h11_request(head: bytes) -> h11.Request | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head.lstrip(b"\r\n"))
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


@settings(derandomize=True, max_examples=400, deadline=None)
@given(mutated())
def test_mutated_heads_are_refused_or_clean(head: bytes) -> None:
    """Totality on near-valid heads, and what the gate lets through is clean: no bare CR
    or LF, no fold, token names without "_", no CTL in values, and h11 (a different,
    more lenient parser) reads the same request."""
    bounded(head)
    try:
        req = parse_head(head, LIMITS)
    except HttpError:
        return
    assert head.count(b"\r") == head.count(b"\n") == head.count(b"\r\n")
    assert b"\n " not in head and b"\n\t" not in head
    for name, value in req.headers:
        assert name and all(c in TCHAR_NO_UNDERSCORE for c in name)
        assert value == value.strip(" \t")
        assert all(c == "\t" or 0x20 <= ord(c) != 0x7F for c in value)
    other = h11_request(head)
    assert other is not None
    assert other.method.decode() == req.method
    assert other.target.decode("latin-1") == req.uri
    ours = [(n.lower(), v) for n, v in req.headers]
    theirs = [(n.decode(), v.decode("latin-1")) for n, v in other.headers]
    assert ours == [(n, v) for n, v in theirs if "_" not in n]


def test_worst_case_inputs_stay_linear() -> None:
    """Shapes that make backtracking regexes explode (CVE-2020-5236) stay fast."""
    big = 1 << 20
    limits = Limits(buffer_size=big, max_request_line=big, max_fields=big, max_field_size=big)
    cases = [
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a" + b" \t" * 20000 + b"\x01\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a " * 20000 + b"\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X:\r\n" * 10000 + b"Y : z\r\n\r\n",
        b"GET /" + b"a" * 40000 + b" HTTP/1.1\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X" * 40000 + b"\r\n\r\n",
    ]
    for data in cases:
        t0 = time.perf_counter()
        try:
            parse_head(data, limits)
        except HttpError as exc:
            assert exc.status == 400
        else:
            raise AssertionError("accepted a malformed head")
        assert time.perf_counter() - t0 < 0.010 * len(data) / 1024
    chunk_case = b"1;" + b'a="\\"' * 500 + b"c= \r\n"
    t0 = time.perf_counter()
    with pytest.raises(HttpError) as info:
        ChunkedDecoder(limits).feed(chunk_case)
    assert info.value.status == 400
    assert time.perf_counter() - t0 < 0.010 * len(chunk_case) / 1024
