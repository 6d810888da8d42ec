"""The uwsgi packet codec: header, vars block, encoding, and request var validation."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muleteer.uwsgi_proto import (
    HEADER_SIZE,
    UwsgiProtocolError,
    encode_packet,
    encode_vars,
    parse_header,
    parse_vars,
    validate_request_vars,
)

NGINX_VARS = {
    "QUERY_STRING": "a=1",
    "REQUEST_METHOD": "GET",
    "CONTENT_TYPE": "",
    "CONTENT_LENGTH": "",
    "REQUEST_URI": "/x?a=1",
    "PATH_INFO": "/x",
    "DOCUMENT_ROOT": "/srv",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_SCHEME": "http",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "51234",
    "SERVER_PORT": "80",
    "SERVER_NAME": "example.com",
    "HTTP_HOST": "example.com",
    "HTTP_USER_AGENT": "curl/8.0",
}


def var(key: bytes, value: bytes) -> bytes:
    return struct.pack("<H", len(key)) + key + struct.pack("<H", len(value)) + value


# -- header -------------------------------------------------------------------------------


def test_header_is_little_endian() -> None:
    assert HEADER_SIZE == 4
    assert parse_header(b"\x00\x34\x12\x00") == (0, 0x1234, 0)
    assert parse_header(b"\x1e\xff\xff\x07rest") == (30, 65535, 7)
    assert parse_header(memoryview(b"\x6e\x00\x00\x11")) == (110, 0, 17)
    assert parse_header(bytearray(b"\x00\x01\x00\x00")) == (0, 1, 0)


def test_header_needs_four_bytes() -> None:
    with pytest.raises(UwsgiProtocolError):
        parse_header(b"\x00\x01\x00")


def test_encode_packet_header() -> None:
    packet = encode_packet({"A": "b"}, modifier1=30, modifier2=9)
    block = var(b"A", b"b")
    assert packet == bytes([30]) + struct.pack("<H", len(block)) + bytes([9]) + block
    assert parse_header(packet) == (30, len(block), 9)


# -- vars ---------------------------------------------------------------------------------


def test_parse_nginx_style_vars() -> None:
    block = b"".join(var(k.encode(), v.encode()) for k, v in NGINX_VARS.items())
    assert parse_vars(block) == NGINX_VARS
    assert parse_vars(memoryview(block)) == NGINX_VARS


def test_values_are_latin1_native_strings() -> None:
    assert parse_vars(var(b"PATH_INFO", b"/caf\xc3\xa9")) == {"PATH_INFO": "/caf\xc3\xa9"}
    assert encode_vars({"PATH_INFO": "/caf\xc3\xa9"}) == var(b"PATH_INFO", b"/caf\xc3\xa9")


def test_empty_values_and_empty_block() -> None:
    assert parse_vars(var(b"A", b"") + var(b"B", b"")) == {"A": "", "B": ""}
    assert parse_vars(b"") == {}


def test_bytes_values_are_encoded_as_is() -> None:
    assert encode_vars({"A": b"\x00\xff"}) == var(b"A", b"\x00\xff")


def test_zero_length_key() -> None:
    # uWSGI refuses it too ("uwsgi key cannot be null")
    with pytest.raises(UwsgiProtocolError, match="zero-length"):
        parse_vars(var(b"A", b"1") + var(b"", b"x"))


def test_duplicate_content_length_is_refused() -> None:
    with pytest.raises(UwsgiProtocolError, match="duplicate"):
        parse_vars(var(b"CONTENT_LENGTH", b"1") + var(b"CONTENT_LENGTH", b"1000"))


def test_other_duplicate_vars_keep_the_last_value() -> None:
    # nginx sends both when a config overrides a param of the included uwsgi_params.
    block = var(b"SERVER_NAME", b"a") + var(b"PATH_INFO", b"/") + var(b"SERVER_NAME", b"b")
    assert parse_vars(block) == {"SERVER_NAME": "b", "PATH_INFO": "/"}


def test_max_vars() -> None:
    block = b"".join(var(b"K%d" % i, b"v") for i in range(1000))
    assert len(parse_vars(block)) == 1000
    with pytest.raises(UwsgiProtocolError, match="more than 1000"):
        parse_vars(block + var(b"K1000", b"v"))
    with pytest.raises(UwsgiProtocolError):
        parse_vars(var(b"A", b"1") + var(b"B", b"2"), max_vars=1)


def test_length_running_past_the_block() -> None:
    with pytest.raises(UwsgiProtocolError):
        parse_vars(struct.pack("<H", 5) + b"KEY")  # key length 5, 3 bytes left
    with pytest.raises(UwsgiProtocolError):
        parse_vars(var(b"KEY", b"")[:-2] + struct.pack("<H", 100) + b"v")


def test_trailing_byte() -> None:
    with pytest.raises(UwsgiProtocolError):
        parse_vars(var(b"A", b"1") + b"\x00")


def test_truncation_at_every_offset_is_an_error() -> None:
    block = b"".join(var(k.encode(), v.encode()) for k, v in NGINX_VARS.items())
    boundaries = set()
    pos = 0
    for k, v in NGINX_VARS.items():
        pos += 4 + len(k) + len(v)
        boundaries.add(pos)
    for cut in range(1, len(block)):
        if cut in boundaries:  # a shorter, complete block: fewer vars, not an error
            assert len(parse_vars(block[:cut])) < len(NGINX_VARS)
            continue
        with pytest.raises(UwsgiProtocolError):
            parse_vars(block[:cut])


def test_encode_rejects_what_cannot_be_sent() -> None:
    with pytest.raises(ValueError):
        encode_vars({"": "x"})
    with pytest.raises(ValueError):
        encode_vars({"A": "x" * 65536})
    with pytest.raises(ValueError):
        encode_vars({"A": "\u20ac"})  # not latin-1
    with pytest.raises(ValueError):
        encode_packet({"A": "x" * 65000, "B": "y" * 1000})  # block > 65535
    assert len(encode_packet({"A": "x" * (65535 - 5)})) == 4 + 65535


keys = st.text(st.characters(max_codepoint=255), min_size=1, max_size=40)
vals = st.text(st.characters(max_codepoint=255), max_size=200)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.dictionaries(keys, vals, max_size=40), st.integers(0, 255), st.integers(0, 255))
def test_round_trip(env: dict[str, str], m1: int, m2: int) -> None:
    packet = encode_packet(env, m1, m2)
    assert parse_header(packet) == (m1, len(packet) - HEADER_SIZE, m2)
    assert parse_vars(packet[HEADER_SIZE:]) == env


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_blocks_parse_or_raise(block: bytes) -> None:
    try:
        env = parse_vars(block)
    except UwsgiProtocolError:
        return
    assert encode_vars(env) == block  # whatever parses is a canonical encoding


# -- validate_request_vars ----------------------------------------------------------------

GOOD = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/"}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"SERVER_PROTOCOL": "HTTP/1.0"},
        {"SERVER_PROTOCOL": None},
        {"CONTENT_LENGTH": ""},
        {"CONTENT_LENGTH": "0"},
        {"CONTENT_LENGTH": "9" * 19},
        {"REQUEST_METHOD": "PROPFIND"},
        {"REQUEST_METHOD": "X-CUSTOM"},
        {"PATH_INFO": "/caf\xc3\xa9 with space"},
        {"PATH_INFO": "/a\nb"},  # nginx decodes %0A; PATH_INFO never reaches the head
        {"QUERY_STRING": "a\r\nb"},  # not echoed anywhere: passed through
        {"UWSGI_FILE": "exec://id"},  # magic vars are only plain strings here
    ],
)
def test_valid_request_vars(changes: dict[str, str | None]) -> None:
    env = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    validate_request_vars(env)  # does not raise


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"REQUEST_METHOD": None}, "missing REQUEST_METHOD"),
        ({"REQUEST_METHOD": ""}, "invalid REQUEST_METHOD"),
        ({"REQUEST_METHOD": "GET POST"}, "invalid REQUEST_METHOD"),
        ({"REQUEST_METHOD": "G@T"}, "invalid REQUEST_METHOD"),
        ({"REQUEST_METHOD": "GET\r\nX: y"}, "CR, LF or NUL in REQUEST_METHOD"),
        # uWSGI issue #2000: SERVER_PROTOCOL is echoed into the status line
        ({"SERVER_PROTOCOL": "AAA HTTP/1.1\r\nX: y"}, "CR, LF or NUL in SERVER_PROTOCOL"),
        ({"SERVER_PROTOCOL": "HTTP/2.0"}, "invalid SERVER_PROTOCOL"),
        ({"SERVER_PROTOCOL": "http/1.1"}, "invalid SERVER_PROTOCOL"),
        ({"SERVER_PROTOCOL": "HTTP/1.1 "}, "invalid SERVER_PROTOCOL"),
        ({"SERVER_PROTOCOL": ""}, "invalid SERVER_PROTOCOL"),
        # CVE-2022-24761 pattern: int() accepts signs, underscores and spaces
        ({"CONTENT_LENGTH": "+1"}, "invalid CONTENT_LENGTH"),
        ({"CONTENT_LENGTH": "-1"}, "invalid CONTENT_LENGTH"),
        ({"CONTENT_LENGTH": "0x1"}, "invalid CONTENT_LENGTH"),
        ({"CONTENT_LENGTH": " 1"}, "invalid CONTENT_LENGTH"),
        ({"CONTENT_LENGTH": "1_0"}, "invalid CONTENT_LENGTH"),
        ({"CONTENT_LENGTH": "1" * 20}, "invalid CONTENT_LENGTH"),
        ({"CONTENT_LENGTH": "\u0661"}, "invalid CONTENT_LENGTH"),  # Arabic-Indic one
        ({"PATH_INFO": "/a\x00.py"}, "NUL in PATH_INFO"),
        ({"REQUEST_URI": "/a\rb"}, "CR, LF or NUL in REQUEST_URI"),
    ],
)
def test_invalid_request_vars(changes: dict[str, str | None], match: str) -> None:
    env = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    with pytest.raises(UwsgiProtocolError, match=match):
        validate_request_vars(env)
