"""ChunkedDecoder: strict chunked bodies (RFC 9112 7.1; rules S6 and S7)."""

from __future__ import annotations

import pytest

from muleteer.http import ChunkedDecoder, HttpError, Limits

LIMITS = Limits()
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"  # a pipelined request after the body


def decode(data: bytes, limits: Limits = LIMITS) -> tuple[bytes, int, ChunkedDecoder]:
    dec = ChunkedDecoder(limits)
    body, used = dec.feed(data)
    return body, used, dec


def decode_in_pieces(pieces: list[bytes], limits: Limits = LIMITS) -> tuple[bytes, int, bool]:
    dec = ChunkedDecoder(limits)
    body, used = b"", 0
    for piece in pieces:
        out, n = dec.feed(piece)
        body += out
        used += n
    return body, used, dec.done


def status_of(data: bytes, limits: Limits = LIMITS) -> int:
    with pytest.raises(HttpError) as info:
        ChunkedDecoder(limits).feed(data)
    return info.value.status


MESSAGE = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
BODY = b"hello 0123456789"


def test_whole_message() -> None:
    body, used, dec = decode(MESSAGE)
    assert (body, used) == (BODY, len(MESSAGE))
    assert dec.done is True
    assert dec.size == len(BODY)


def test_every_split_gives_the_same_result() -> None:
    data = MESSAGE + NEXT
    for cut in range(len(data) + 1):
        body, used, done = decode_in_pieces([data[:cut], data[cut:]])
        assert (body, used, done) == (BODY, len(MESSAGE), True), cut


def test_byte_by_byte() -> None:
    pieces = [MESSAGE[i : i + 1] for i in range(len(MESSAGE))]
    assert decode_in_pieces(pieces) == (BODY, len(MESSAGE), True)


def test_not_done_until_the_trailer_section_ends() -> None:
    dec = ChunkedDecoder(LIMITS)
    assert dec.feed(b"3\r\nabc\r\n0\r\n") == (b"abc", 11)
    assert dec.done is False
    assert dec.feed(b"\r") == (b"", 1)
    assert dec.done is False
    assert dec.feed(b"\n" + NEXT) == (b"", 1)
    assert dec.done is True


def test_bytes_after_the_message_are_not_consumed() -> None:
    body, used, dec = decode(b"2\r\nhi\r\n0\r\n\r\n" + NEXT)
    assert (body, used, dec.done) == (b"hi", 12, True)
    assert dec.feed(NEXT) == (b"", 0)  # once done, nothing more is taken


def test_memoryview_and_bytearray_input() -> None:
    data = b"2\r\nhi\r\n0\r\n\r\n"
    assert ChunkedDecoder(LIMITS).feed(memoryview(data)) == (b"hi", len(data))
    assert ChunkedDecoder(LIMITS).feed(bytearray(data)) == (b"hi", len(data))


def test_empty_feed() -> None:
    assert ChunkedDecoder(LIMITS).feed(b"") == (b"", 0)


def test_partial_data_is_returned_as_it_comes() -> None:
    dec = ChunkedDecoder(LIMITS)
    assert dec.feed(b"a\r\n01234") == (b"01234", 8)
    assert dec.size == 10  # the declared size counts as soon as the chunk starts
    assert dec.feed(b"56789\r\n") == (b"56789", 7)


@pytest.mark.parametrize(
    ("size_line", "size"),
    [
        (b"a", 10),
        (b"A", 10),
        (b"000a", 10),
        (b"0000000000000001", 1),  # 16 hex digits is the maximum
    ],
)
def test_chunk_sizes(size_line: bytes, size: int) -> None:
    body, _, dec = decode(size_line + b"\r\n" + b"x" * size + b"\r\n0\r\n\r\n")
    assert body == b"x" * size
    assert dec.done is True


@pytest.mark.parametrize(
    "ext",
    [
        b";a",
        b";a=b",
        b";a=b;c;d=e",
        b';name="quoted value"',
        b';q="with \\" escaped quote"',
        b';q=""',
        b';q="tab\tand obs-text \xe9"',
        b";!#$%&'*+-.^_`|~=1",
    ],
)
def test_valid_chunk_extensions_are_ignored(ext: bytes) -> None:
    body, _, dec = decode(b"2" + ext + b"\r\nok\r\n0" + ext + b"\r\n\r\n")
    assert (body, dec.done) == (b"ok", True)


def test_trailers_are_dropped() -> None:
    # S7: trailers never reach the caller (RFC 9110 6.5.1: Host, Content-Length in a
    # trailer must not override the head).
    data = b"2\r\nok\r\n0\r\nHost: evil\r\nContent-Length: 99\r\nX-Sum:  1 \r\n\r\n"
    body, used, dec = decode(data)
    assert (body, used, dec.done, dec.size) == (b"ok", len(data), True, 2)
    assert not any(b"evil" in v for v in vars_of(dec))


def vars_of(dec: ChunkedDecoder) -> list[bytes]:
    """Every bytes-like attribute the decoder keeps (to prove no trailer is kept)."""
    values = [getattr(dec, name, None) for name in dir(dec) if not name.startswith("__")]
    return [bytes(v) for v in values if isinstance(v, bytes | bytearray)]


BAD_FRAMING: list[tuple[str, bytes, int]] = [
    # S6: chunk size is 1-16 hex digits and nothing else (CVE-2022-24761 waitress: int())
    ("0x prefix", b"0x1\r\na\r\n0\r\n\r\n", 400),
    ("plus sign", b"+1\r\na\r\n0\r\n\r\n", 400),
    ("minus sign", b"-1\r\na\r\n0\r\n\r\n", 400),
    ("leading space", b" 1\r\na\r\n0\r\n\r\n", 400),
    ("trailing space", b"1 \r\na\r\n0\r\n\r\n", 400),
    ("space before extension", b"1 ;a\r\na\r\n0\r\n\r\n", 400),
    ("17 hex digits", b"0" * 16 + b"1\r\na\r\n0\r\n\r\n", 400),
    ("empty size", b"\r\na\r\n0\r\n\r\n", 400),
    ("not hex", b"g\r\na\r\n0\r\n\r\n", 400),
    ("underscore", b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n", 400),
    ("bare LF after size", b"1\na\r\n0\r\n\r\n", 400),
    ("bare CR after size", b"1\ra\r\n0\r\n\r\n", 400),
    # S6: extensions are ;token[=token|quoted-string], no whitespace (CVE-2025-43859 h11)
    ("extension with space", b"1; a\r\na\r\n0\r\n\r\n", 400),
    ("extension space before =", b"1;a =b\r\na\r\n0\r\n\r\n", 400),
    ("extension without name", b"1;=b\r\na\r\n0\r\n\r\n", 400),
    ("extension empty value", b"1;a=\r\na\r\n0\r\n\r\n", 400),
    ("extension unterminated quote", b'1;a="b\r\na\r\n0\r\n\r\n', 400),
    ("extension CTL", b"1;a=\x01\r\na\r\n0\r\n\r\n", 400),
    ("extension two values", b"1;a=b c\r\na\r\n0\r\n\r\n", 400),
    ("bare semicolon", b"1;\r\na\r\n0\r\n\r\n", 400),
    # CRLF required after chunk data (RFC 9112 7.1; gunicorn chunked_* cases)
    ("data too long", b"5\r\nhelloX\r\n0\r\n\r\n", 400),
    ("bare LF after data", b"5\r\nhello\n0\r\n\r\n", 400),
    ("bare CR after data", b"5\r\nhello\r0\r\n\r\n", 400),
    ("no CRLF after data", b"5\r\nhello0\r\n\r\n", 400),
    ("two other bytes after data", b"5\r\nhelloXY0\r\n\r\n", 400),
    ("LF CR after data", b"5\r\nhello\n\r0\r\n\r\n", 400),
    # S7: trailer fields follow head field rules
    ("trailer space before colon", b"0\r\nX : a\r\n\r\n", 400),
    ("trailer obs-fold", b"0\r\nX: a\r\n b\r\n\r\n", 400),
    ("trailer CTL", b"0\r\nX: a\x00\r\n\r\n", 400),
    ("trailer bare LF", b"0\r\nX: a\n\r\n", 400),
    ("trailer without colon", b"0\r\nX\r\n\r\n", 400),
    ("last chunk LF LF", b"0\n\n", 400),
    ("last chunk missing final CRLF", b"0\r\n\n", 400),
]


@pytest.mark.parametrize(
    ("data", "status"), [r[1:] for r in BAD_FRAMING], ids=[r[0] for r in BAD_FRAMING]
)
def test_bad_framing(data: bytes, status: int) -> None:
    assert status_of(data) == status


@pytest.mark.parametrize(
    ("data", "status"), [r[1:] for r in BAD_FRAMING], ids=[r[0] for r in BAD_FRAMING]
)
def test_bad_framing_byte_by_byte(data: bytes, status: int) -> None:
    dec = ChunkedDecoder(LIMITS)
    with pytest.raises(HttpError) as info:
        for i in range(len(data)):
            dec.feed(data[i : i + 1])
    assert info.value.status == status


def test_chunk_line_limit() -> None:
    limits = Limits(max_chunk_line=20)
    fits = b"1;" + b"e" * 18
    assert len(fits) == 20  # the limit counts the line without its CRLF
    assert decode(fits + b"\r\nx\r\n0\r\n\r\n", limits)[0] == b"x"
    assert status_of(fits + b"e\r\nx\r\n0\r\n\r\n", limits) == 400


def test_extension_flood_is_refused_before_its_end() -> None:
    # Go CVE-2023-39326 pattern: an endless chunk line must not be buffered forever.
    dec = ChunkedDecoder(LIMITS)
    assert dec.feed(b"1;a=" + b"b" * 4000) == (b"", 4004)
    with pytest.raises(HttpError) as info:
        dec.feed(b"b" * 200)
    assert info.value.status == 400


def test_framing_overhead_budget() -> None:
    # Many 1-byte chunks each carrying 1 KiB of extensions: refused long before
    # limit_post would notice (the decoded body stays tiny).
    chunk = b"1;e=" + b"x" * 1000 + b"\r\nz\r\n"
    dec = ChunkedDecoder(LIMITS)
    with pytest.raises(HttpError) as info:
        for _ in range(100):
            dec.feed(chunk)
    assert info.value.status == 400
    assert dec.size < 20


def test_small_chunks_without_extensions_are_fine() -> None:
    data = b"1\r\nz\r\n" * 10_000 + b"0\r\n\r\n"
    body, used, dec = decode(data)
    assert (len(body), used, dec.done) == (10_000, len(data), True)


def test_limit_post() -> None:
    limits = Limits(limit_post=10)
    assert decode(b"5\r\n12345\r\n5\r\n67890\r\n0\r\n\r\n", limits)[0] == b"1234567890"
    assert status_of(b"5\r\n12345\r\n6\r\n678901\r\n0\r\n\r\n", limits) == 413


def test_limit_post_refuses_a_huge_declared_chunk_at_once() -> None:
    dec = ChunkedDecoder(Limits(limit_post=1000))
    with pytest.raises(HttpError) as info:
        dec.feed(b"ffffffffffffffff\r\n")
    assert info.value.status == 413
    assert dec.size == 0


def test_trailer_size_limit() -> None:
    limits = Limits(max_trailer_size=30)
    ok = b"0\r\n" + b"X: " + b"v" * 23 + b"\r\n\r\n"  # trailer section: 28 + 2 bytes
    assert decode(ok, limits)[2].done is True
    assert status_of(b"0\r\n" + b"X: " + b"v" * 24 + b"\r\n\r\n", limits) == 431
    assert status_of(b"0\r\n" + b"X: " + b"v" * 100, limits) == 431  # still incomplete
