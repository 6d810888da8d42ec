"""The uwsgi packet codec: what nginx ``uwsgi_pass`` sends to a ``--socket``.

A packet is a 4-byte header, ``modifier1`` (u8), ``datasize`` (u16 little-endian) and
``modifier2`` (u8), then ``datasize`` bytes of vars, each ``[u16-LE key length][key]
[u16-LE value length][value]``, then the request body (CONTENT_LENGTH bytes).
See ``research/uwsgi-behaviour.md`` section 7 and ``research/reliability.md`` section 2.

The peer sets every environ variable, so vars are checked strictly: every length is
bounded by the block, keys are non-empty and unique, and the few vars that reach the
response head or the body framing are validated (:func:`validate_request_vars`). The rest
pass through as plain strings; nothing here gives meaning to uWSGI's "magic" variables
(``UWSGI_FILE`` and friends), which let a peer load code into uWSGI.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping

__all__ = [
    "HEADER_SIZE",
    "UwsgiProtocolError",
    "encode_packet",
    "encode_vars",
    "parse_header",
    "parse_vars",
    "validate_request_vars",
]

HEADER_SIZE = 4
MAX_BLOCK = 0xFFFF  # datasize is a u16

_HEADER = struct.Struct("<BHB")
_U16 = struct.Struct("<H")

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
_DIGITS_RE = re.compile(r"[0-9]{1,19}")  # 19 digits always fit in a signed 64-bit int
_PROTOCOLS = frozenset({"HTTP/1.0", "HTTP/1.1"})
_LINE_BREAKERS = re.compile(r"[\r\n\x00]")
# Vars that end up in the response status line or in logs: uWSGI issue #2000 echoed a
# SERVER_PROTOCOL carrying "\r\n" into the status line (response splitting).
_NO_CRLF_VARS = ("REQUEST_METHOD", "SERVER_PROTOCOL", "REQUEST_URI")
# nginx sends PATH_INFO already percent-decoded, so a path with %0A legitimately holds a
# newline; it never reaches the response head, so only NUL is refused there.
_NUL = "\x00"
# Framing depends on it: two values would let the peer choose which one we believe.
_SINGLETON_VARS = frozenset({"CONTENT_LENGTH"})


class UwsgiProtocolError(Exception):
    """A malformed or unacceptable uwsgi packet: log it and close the connection."""


def parse_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(modifier1, datasize, modifier2) from the first 4 bytes of data.

    Raises UwsgiProtocolError when fewer than HEADER_SIZE bytes are given.
    """
    if len(data) < HEADER_SIZE:
        raise UwsgiProtocolError(f"uwsgi header needs {HEADER_SIZE} bytes, got {len(data)}")
    modifier1, datasize, modifier2 = _HEADER.unpack_from(data)
    return modifier1, datasize, modifier2


def parse_vars(block: bytes | bytearray | memoryview, max_vars: int = 1000) -> dict[str, str]:
    """Decode a vars block into a dict of latin-1 strings (WSGI native strings).

    Raises UwsgiProtocolError on a zero-length key, a length running past the block,
    trailing bytes, a repeated CONTENT_LENGTH, or more than max_vars vars. Other repeated
    vars keep the last value, as uWSGI does: nginx sends both copies when a config
    overrides a `uwsgi_param` of the included uwsgi_params.
    """
    data = bytes(block)
    end = len(data)
    out: dict[str, str] = {}
    pos = 0
    count = 0  # vars read, repeated keys included: they cost the same work
    while pos < end:
        if count >= max_vars:
            raise UwsgiProtocolError(f"more than {max_vars} uwsgi vars")
        count += 1
        key, pos = _read_string(data, pos, end)
        if not key:
            # uWSGI refuses it too ("uwsgi key cannot be null").
            raise UwsgiProtocolError("zero-length uwsgi key")
        value, pos = _read_string(data, pos, end)
        if key in out and key in _SINGLETON_VARS:
            # Two body lengths: which one wins would be a choice an attacker makes for
            # us (the same desync as a duplicate Content-Length in HTTP).
            raise UwsgiProtocolError(f"duplicate uwsgi var {key[:64]!r}")
        out[key] = value
    return out


def _read_string(data: bytes, pos: int, end: int) -> tuple[str, int]:
    """One length-prefixed string at pos; (string, position after it)."""
    if pos + 2 > end:
        # A lone trailing byte cannot start a var: it is garbage after the last one.
        raise UwsgiProtocolError("truncated uwsgi var length")
    (size,) = _U16.unpack_from(data, pos)
    pos += 2
    if pos + size > end:
        raise UwsgiProtocolError("uwsgi var runs past the end of the block")
    return data[pos : pos + size].decode("latin-1"), pos + size


def _to_bytes(item: str | bytes, what: str) -> bytes:
    raw = item.encode("latin-1") if isinstance(item, str) else bytes(item)
    if len(raw) > MAX_BLOCK:
        raise ValueError(f"uwsgi {what} longer than {MAX_BLOCK} bytes")
    return raw


def encode_vars(vars: Mapping[str, str | bytes]) -> bytes:
    """Encode vars as a uwsgi vars block. Strings are encoded latin-1.

    Raises ValueError on an empty key, a key or value longer than 65535 bytes, or a
    string that latin-1 cannot encode (UnicodeEncodeError is a ValueError).
    """
    parts: list[bytes] = []
    for key, value in vars.items():
        raw_key = _to_bytes(key, "key")
        if not raw_key:
            raise ValueError("empty uwsgi key")
        raw_value = _to_bytes(value, "value")
        parts += (_U16.pack(len(raw_key)), raw_key, _U16.pack(len(raw_value)), raw_value)
    return b"".join(parts)


def encode_packet(vars: Mapping[str, str | bytes], modifier1: int = 0, modifier2: int = 0) -> bytes:
    """Header plus vars block (no body). ValueError if the block exceeds 65535 bytes."""
    block = encode_vars(vars)
    if len(block) > MAX_BLOCK:
        raise ValueError(f"uwsgi vars block of {len(block)} bytes exceeds {MAX_BLOCK}")
    return _HEADER.pack(modifier1, len(block), modifier2) + block


def validate_request_vars(vars: Mapping[str, str]) -> None:
    """Check the vars that drive framing and the response head; raise UwsgiProtocolError.

    - REQUEST_METHOD present and a token (RFC 9110 9.1);
    - SERVER_PROTOCOL absent or exactly HTTP/1.0 or HTTP/1.1 (uWSGI issue #2000: it is
      echoed into the status line);
    - CONTENT_LENGTH absent, empty, or 1*DIGIT of at most 19 digits (no "+1", "0x1",
      "-1": int() would take the first two, CVE-2022-24761);
    - no CR, LF or NUL in REQUEST_METHOD, SERVER_PROTOCOL, REQUEST_URI; no NUL in PATH_INFO.
    """
    for name in _NO_CRLF_VARS:
        value = vars.get(name)
        if value is not None and _LINE_BREAKERS.search(value):
            raise UwsgiProtocolError(f"CR, LF or NUL in {name}")
    if _NUL in vars.get("PATH_INFO", ""):
        raise UwsgiProtocolError("NUL in PATH_INFO")
    method = vars.get("REQUEST_METHOD")
    if method is None:
        raise UwsgiProtocolError("missing REQUEST_METHOD")
    if not _TOKEN_RE.fullmatch(method):
        raise UwsgiProtocolError(f"invalid REQUEST_METHOD {method[:64]!r}")
    protocol = vars.get("SERVER_PROTOCOL")
    if protocol is not None and protocol not in _PROTOCOLS:
        raise UwsgiProtocolError(f"invalid SERVER_PROTOCOL {protocol[:64]!r}")
    length = vars.get("CONTENT_LENGTH")
    if length and not _DIGITS_RE.fullmatch(length):
        raise UwsgiProtocolError(f"invalid CONTENT_LENGTH {length[:64]!r}")
