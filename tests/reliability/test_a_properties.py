"""A4: properties of the worker's parse path and of the uwsgi codec (hypothesis).

Derandomized, with fixed example counts. Every property drives the same incremental path
as the worker (``conftest.HttpFeeder``): scan_head, parse_head, the body, the next request.
"""

from __future__ import annotations

import itertools
import re
import struct
import time
from collections.abc import Callable
from functools import partial

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muleteer import uwsgi_proto
from muleteer.http import Limits

from .conftest import (
    NARROW,
    TIGHT,
    GenRequest,
    Verdict,
    damaged_streams,
    drive,
    gen_requests,
    uwsgi_read,
)

LIMITS = Limits(buffer_size=16384)


def props(examples: int) -> settings:
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def pieces_at(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def served(rs: list[GenRequest]) -> Verdict:
    """The verdict a stream of valid requests must get: each served in order, up to the
    first one that does not keep the connection alive."""
    out = []
    for r in rs:
        out.append(r.expected())
        if not r.keep_alive():
            return Verdict(tuple(out), "closed")
    return Verdict(tuple(out), "clean")


# -- HTTP ----------------------------------------------------------------------------------


@props(400)
@given(gen_requests())
def test_round_trip(r: GenRequest) -> None:
    """(a) A generated valid request (CL or chunked with random chunk sizes, extensions and
    trailers) parses back to exactly what was generated."""
    assert drive([r.wire()], LIMITS) == served([r])


@props(300)
@given(st.lists(gen_requests(), min_size=1, max_size=4), st.lists(st.integers(0, 4000)))
def test_split_invariance_valid(rs: list[GenRequest], cuts: list[int]) -> None:
    """(b) Any split of a valid pipelined stream gives the whole stream's verdict."""
    data = b"".join(r.wire() for r in rs)
    assert drive(pieces_at(data, cuts), LIMITS) == drive([data], LIMITS) == served(rs)


@props(300)
@given(st.lists(gen_requests(http10=False), min_size=1, max_size=6))
def test_k_pipelined_requests_parse_as_k(rs: list[GenRequest]) -> None:
    """(d) k pipelined keep-alive requests give exactly k requests, in order."""
    for r in rs[:-1]:
        r.keep_alive_field = None  # HTTP/1.1 default: persistent
    verdict = drive([b"".join(r.wire() for r in rs)], LIMITS)
    assert len(verdict.requests) == len(rs)
    assert verdict == served(rs)


@props(800)
@given(
    damaged_streams(),
    st.lists(st.integers(0, 4000), max_size=8),
    st.sampled_from([LIMITS, TIGHT, NARROW]),
)
def test_split_invariance_any_bytes(data: bytes, cuts: list[int], limits: Limits) -> None:
    """(b) The verdict, status included, does not depend on how the bytes were read, for
    invalid and truncated streams too (per byte and at random cuts)."""
    whole = drive([data], limits)
    assert drive(pieces_at(data, cuts), limits) == whole
    assert drive([data[i : i + 1] for i in range(len(data))], limits) == whole


def within_budget(call: Callable[[], object], size: int) -> float:
    """Best of 3 run times of call, in seconds per KiB of input (at least 1 KiB)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best / max(1.0, size / 1024)


@props(500)
@given(st.binary(max_size=8192) | damaged_streams(), st.booleans())
def test_totality_and_time_bound(data: bytes, tight: bool) -> None:
    """(c) Arbitrary bytes end as requests, "need more data" or an HttpError (the driver
    lets any other exception through), within 10 ms per KiB (CVE-2020-5236)."""
    limits = TIGHT if tight else LIMITS
    verdict = drive([data], limits)
    assert verdict.end in ("clean", "closed", "incomplete", "error")
    assert (verdict.status is not None) == (verdict.end == "error")
    assert verdict.status in (None, 400, 413, 414, 431, 501, 505)
    assert within_budget(lambda: drive([data], limits), len(data)) < 0.010


def test_time_bound_on_worst_shapes(record_figure: Callable[..., None]) -> None:
    """(c) Shapes that make backtracking or rescanning parsers slow, fed at once and in
    1 KiB reads (each read rescans the buffer), stay within 10 ms per KiB."""
    big = Limits(buffer_size=65535, max_request_line=65535, max_fields=10000)
    shapes = [
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a" + b" " * 60000 + b"\x01\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 9000 + b"\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X:\r\n" * 16000,
        b"GET /" + b"%" * 60000 + b" HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1;a="
        + b'"\\a' * 1300
        + b"\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1\r\nx\r\n" * 20000
        + b"0\r\n\r\n",
        b"\r\n" * 30000,
    ]
    worst = 0.0
    for data in shapes:
        reads = [data[i : i + 1024] for i in range(0, len(data), 1024)]
        for pieces in ([data], reads):
            per_kib = within_budget(partial(drive, pieces, big), len(data))
            assert per_kib < 0.010, (data[:40], per_kib)
            worst = max(worst, per_kib)
    record_figure(
        "A4",
        f"worst parse time of {len(shapes)} ReDoS/rescan shapes (limit 10 ms/KiB)",
        f"{worst * 1000:.3f} ms/KiB",
    )


# (e) One of these inserted at a framing-relevant spot never changes a body's length
# without a rejection (the research note's list: smuggling tricks on CL, TE and chunks).
TRICKS = [b"\r", b"\n", b"\x00", b" ", b"\t", b"\x0b", b"\x0c", b",", b";", b"+", b"-", b"0x", b"_"]
# Token characters: inside a field name they only make another, unrelated field name
# ("+Content-Length"), or one that S8 drops ("Content_Length"), so they go after the colon.
TOKEN_TRICKS = {b"+", b"-", b"0x", b"_"}
_FIELD_RE = re.compile(rb"(?im)^(content-length|transfer-encoding|connection)(:[^\r]*\r\n)")
_CHUNK_RE = re.compile(rb"(?m)^[0-9a-fA-F]+(?:;[^\r]*)?\r\n|\r\n\r\n")


@st.composite
def tricked(draw: st.DrawFn) -> tuple[list[GenRequest], bytes]:
    rs = draw(st.lists(gen_requests(), min_size=1, max_size=3))
    data = b"".join(r.wire() for r in rs)
    trick = draw(st.sampled_from(TRICKS))
    spots = set()
    for m in _FIELD_RE.finditer(data):  # the framing fields' names (some tricks), colon, value
        first = m.start(2) + 1 if trick in TOKEN_TRICKS else m.start(1)
        spots.update(range(first, m.end() + 1))
    for m in _CHUNK_RE.finditer(data):  # chunk-size lines, the last chunk, ends of sections
        spots.update(range(m.start(), m.end() + 1))
    # Anywhere else too (the CRLF after chunk data, request lines), less often.
    pos = draw(st.sampled_from(sorted(spots)) | st.integers(0, len(data)))
    if trick in TOKEN_TRICKS and any(
        m.start(1) <= pos <= m.start(2) for m in _FIELD_RE.finditer(data)
    ):
        pos = len(data)  # not inside a name: see TOKEN_TRICKS
    return rs, data[:pos] + trick + data[pos:]


@props(700)
@given(tricked())
def test_framing_tricks_never_change_a_body_length_silently(
    case: tuple[list[GenRequest], bytes],
) -> None:
    rs, data = case
    verdict = drive([data], LIMITS)
    if verdict.end == "error":
        return
    lengths = [len(r.body) for r in verdict.requests]
    assert lengths == [len(r.body) for r in rs][: len(lengths)], verdict


# -- uwsgi ---------------------------------------------------------------------------------

latin1 = st.text(st.characters(max_codepoint=255), max_size=40)
var_keys = st.text(st.characters(max_codepoint=255), min_size=1, max_size=20).filter(
    lambda k: (
        k not in ("REQUEST_METHOD", "CONTENT_LENGTH", "SERVER_PROTOCOL", "REQUEST_URI")
        and k != "PATH_INFO"
    )
)


@st.composite
def uwsgi_requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    body = draw(st.binary(max_size=300))
    env = draw(st.dictionaries(var_keys, latin1, max_size=12))
    env["REQUEST_METHOD"] = draw(st.sampled_from(["GET", "POST", "PURGE", "X-Y"]))
    env["SERVER_PROTOCOL"] = draw(st.sampled_from(["HTTP/1.0", "HTTP/1.1"]))
    env["PATH_INFO"] = draw(latin1.filter(lambda p: "\x00" not in p))
    env["CONTENT_LENGTH"] = str(len(body)) if body or draw(st.booleans()) else ""
    return env, body


@props(400)
@given(uwsgi_requests())
def test_uwsgi_round_trip_through_the_worker_path(req: tuple[dict[str, str], bytes]) -> None:
    env, body = req
    packet = uwsgi_proto.encode_packet(env) + body
    got = uwsgi_read(packet + b"trailing bytes are never a second packet")
    assert (got.end, got.vars, got.body) == ("request", env, body)


@props(150)
@given(uwsgi_requests())
def test_uwsgi_every_truncation_offset_is_incomplete(req: tuple[dict[str, str], bytes]) -> None:
    """A packet cut anywhere is never a (different) request: the datasize and
    CONTENT_LENGTH framing make every prefix "incomplete"."""
    env, body = req
    packet = uwsgi_proto.encode_packet(env) + body
    for cut in range(len(packet)):
        assert uwsgi_read(packet[:cut]).end == "incomplete", cut
    # The vars block alone, cut anywhere: an error, or the vars of a shorter block.
    block = uwsgi_proto.encode_vars(env)
    items = list(env.items())
    for cut in range(len(block) + 1):
        try:
            parsed = uwsgi_proto.parse_vars(block[:cut])
        except uwsgi_proto.UwsgiProtocolError:
            continue
        assert list(parsed.items()) == items[: len(parsed)]
        assert uwsgi_proto.encode_vars(parsed) == block[:cut]


@props(600)
@given(st.binary(max_size=2000) | st.builds(lambda p, b: p + b, st.binary(max_size=4), st.binary()))
def test_uwsgi_random_bytes_only_raise_protocol_errors(data: bytes) -> None:
    verdict = uwsgi_read(data)  # raises anything but UwsgiProtocolError straight through
    assert verdict.end in ("request", "incomplete", "error")
    try:
        uwsgi_proto.validate_request_vars(uwsgi_proto.parse_vars(data))
    except uwsgi_proto.UwsgiProtocolError:
        pass
    if len(data) >= 4:
        assert uwsgi_proto.parse_header(data)[1] == struct.unpack_from("<H", data, 1)[0]


@props(300)
@given(
    st.dictionaries(
        st.sampled_from(
            ["REQUEST_METHOD", "SERVER_PROTOCOL", "CONTENT_LENGTH", "REQUEST_URI", "PATH_INFO", "X"]
        ),
        latin1,
    )
)
def test_uwsgi_validation_is_total(env: dict[str, str]) -> None:
    try:
        uwsgi_proto.validate_request_vars(env)
    except uwsgi_proto.UwsgiProtocolError:
        return
    assert re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", env["REQUEST_METHOD"])
    assert env.get("SERVER_PROTOCOL", "HTTP/1.0") in ("HTTP/1.0", "HTTP/1.1")
    assert re.fullmatch(r"[0-9]{0,19}", env.get("CONTENT_LENGTH", ""))
    assert not any(c in env.get("REQUEST_URI", "") for c in "\r\n\x00")


def test_uwsgi_max_vars_counts_repeated_keys() -> None:
    """research/reliability.md 2: at most 1000 vars per packet. Repeating one key must not
    get round the count (each var costs parsing work whether or not its key is new)."""
    one = struct.pack("<H", 1) + b"K" + struct.pack("<H", 1) + b"v"
    assert uwsgi_proto.parse_vars(one * 1000) == {"K": "v"}
    try:
        uwsgi_proto.parse_vars(one * 1001)
    except uwsgi_proto.UwsgiProtocolError as exc:
        assert "more than 1000" in str(exc)
    else:
        raise AssertionError("1001 vars accepted")
