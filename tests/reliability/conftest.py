"""Suite A helpers: the worker's incremental parse path, split patterns, the corpus loader,
a generator of valid requests, and throwaway installs of test-only tools.

The driver (:class:`HttpFeeder`) repeats what ``muleteer.connection.Conn`` does with the
bytes of one connection: ``scan_head`` on the growing buffer, ``parse_head`` on the head it
measured, the body by Content-Length or :class:`ChunkedDecoder`, then the next pipelined
request. It stops at the first HttpError (S9) and after a request that does not keep the
connection alive (RFC 9112 9.3 and 9.6), as the worker does.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from muleteer import uwsgi_proto
from muleteer.http import ChunkedDecoder, HttpError, Limits, RequestHead, parse_head, scan_head

# Small limits so that damaged streams also run into every size check (414/431/413).
TIGHT = Limits(
    buffer_size=600,
    max_request_line=120,
    max_fields=5,
    max_field_size=60,
    limit_post=150,
    max_chunk_line=40,
    max_trailer_size=60,
)

# As the worker's defaults, the request-line limit above buffer_size (414 against 431).
NARROW = Limits(buffer_size=300, max_request_line=8190, max_fields=6, max_field_size=50)

ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIR = ROOT / "tests" / "data" / "http_corpus"

# Versions of the test-only oracles, as research/reliability.md names them.
GUNICORN = "gunicorn==27.0.1"
WAITRESS = "waitress==3.0.2"
ATHERIS = "atheris"  # 3.1.0 (reliability.md) has no cp311 wheel on the index; newest is used

# -- the worker's path ---------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    """One request as the worker would hand it to the app."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    keep_alive: bool


@dataclass(frozen=True)
class Verdict:
    """What a connection's bytes came to.

    end: "clean" (every byte used, nothing pending), "incomplete" (the bytes stop inside
    a request), "closed" (a request ended the connection; later bytes were never parsed)
    or "error" (an HttpError with `status`; nothing after it was parsed).
    """

    requests: tuple[Req, ...]
    end: str
    status: int | None = None
    reason: str | None = field(default=None, compare=False)  # the HttpError's reason


class HttpFeeder:
    """Feeds one connection's bytes, piece by piece, through the worker's parse path."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.buf = bytearray()
        self.head: RequestHead | None = None
        self.decoder: ChunkedDecoder | None = None
        self.remaining = 0
        self.body = bytearray()
        self.requests: list[Req] = []
        self.status: int | None = None
        self.reason: str | None = None
        self.closed = False

    @property
    def stopped(self) -> bool:
        return self.status is not None or self.closed

    def feed(self, piece: bytes) -> None:
        if self.stopped:
            return  # S9: after an error (or a close) nothing more is parsed
        self.buf += piece
        try:
            while not self.stopped and self._step():
                pass
        except HttpError as exc:
            self.status, self.reason = exc.status, exc.reason

    def _step(self) -> bool:
        """Advance by one head or one request; False when more bytes are needed."""
        if self.head is None:
            end = scan_head(self.buf, self.limits)
            if end < 0:
                return False
            head = parse_head(bytes(self.buf[:end]), self.limits)
            del self.buf[:end]
            self.head = head
            if head.chunked:
                self.decoder = ChunkedDecoder(self.limits)
            else:
                self.remaining = head.content_length or 0
            return True
        if self.decoder is not None:
            out, used = self.decoder.feed(self.buf)
            del self.buf[:used]
            self.body += out
            if not self.decoder.done:
                return False
        else:
            take = min(self.remaining, len(self.buf))
            self.body += self.buf[:take]
            del self.buf[:take]
            self.remaining -= take
            if self.remaining:
                return False
        head = self.head
        self.requests.append(
            Req(
                head.method,
                head.uri,
                head.version,
                tuple(head.headers),
                bytes(self.body),
                head.keep_alive,
            )
        )
        self.head, self.decoder, self.body = None, None, bytearray()
        if not head.keep_alive:
            self.closed = True  # RFC 9112 9.6: no further request is processed
        return True

    def finish(self) -> Verdict:
        """The verdict once the peer has sent everything (EOF)."""
        if self.status is not None:
            end = "error"
        elif self.closed:
            end = "closed"
        elif self.buf or self.head is not None:
            end = "incomplete"
        else:
            end = "clean"
        return Verdict(tuple(self.requests), end, self.status, self.reason)


def drive(pieces: Sequence[bytes], limits: Limits) -> Verdict:
    feeder = HttpFeeder(limits)
    for piece in pieces:
        feeder.feed(piece)
    return feeder.finish()


def split_patterns(data: bytes, seed: int) -> dict[str, list[bytes]]:
    """The five ways every case is fed: whole, per line, per byte, random pieces (seeded),
    and one byte then the rest."""
    lines = [m.group() for m in re.finditer(rb"[^\n]*\n|[^\n]+$", data)]
    rng = random.Random(seed)
    pieces, pos = [], 0
    top = max(1, len(data) // 8)
    while pos < len(data):
        size = rng.randint(1, top)
        pieces.append(data[pos : pos + size])
        pos += size
    return {
        "whole": [data],
        "lines": lines,
        "bytes": [data[i : i + 1] for i in range(len(data))],
        "random": pieces,
        "one_then_rest": [data[:1], data[1:]],
    }


def verdict_all_splits(data: bytes, limits: Limits, seed: int = 0) -> Verdict:
    """The verdict of data, asserting it is the same under all five split patterns."""
    patterns = split_patterns(data, seed)
    first = drive(patterns["whole"], limits)
    for name, pieces in patterns.items():
        assert b"".join(pieces) == data
        verdict = drive(pieces, limits)
        assert verdict == first, f"split {name!r} gives {verdict} but whole gives {first}"
    return first


# -- our corpus ----------------------------------------------------------------------------

_ESCAPE_RE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|[rnt0\\])")
_ESCAPES = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\x00", b"\\": b"\\"}


def decode_escaped(text: bytes, layout: bytes = b"\r\n") -> bytes:
    """Bytes of a .http corpus file: real line breaks (the bytes in layout) are layout only;
    CR, LF, HTAB, NUL, backslash and any byte are written \\r, \\n, \\t, \\0, \\\\, \\xHH."""
    for byte in layout:
        text = text.replace(bytes([byte]), b"")

    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1] == b"x":
            return bytes([int(code[1:], 16)])
        return _ESCAPES[code]

    out = _ESCAPE_RE.sub(one, text)
    stray = _ESCAPE_RE.sub(b"", text)
    if b"\\" in stray:
        raise ValueError("unknown escape in corpus file")
    return out


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    limits: Limits
    expect: dict[str, Any]
    cite: str
    about: str
    tags: tuple[str, ...] = field(default=())


def limits_from(spec: dict[str, int] | None) -> Limits:
    return Limits(**(spec or {}))


def load_corpus() -> list[Case]:
    cases = []
    for meta_path in sorted(CORPUS_DIR.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        raw = meta_path.with_suffix(".http").read_bytes()
        data = decode_escaped(raw)
        # Long cases stay readable: {"@@": ["text", count]} puts text * count at each "@@".
        for marker, (text, count) in meta.get("repeat", {}).items():
            data = data.replace(marker.encode(), text.encode("latin-1") * count)
        cases.append(
            Case(
                name=meta_path.stem,
                data=data,
                limits=limits_from(meta.get("limits")),
                expect=meta["expect"],
                cite=meta["cite"],
                about=meta["about"],
                tags=tuple(meta.get("tags", ())),
            )
        )
    return cases


def case_seed(name: str) -> int:
    return zlib.crc32(name.encode())


# -- generated valid requests --------------------------------------------------------------

TCHAR = "!#$%&'*+-.^`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
RESERVED = {"host", "content-length", "transfer-encoding", "content-type", "connection", "expect"}
VCHAR_OBS = "".join(map(chr, [*range(0x21, 0x7F), *range(0x80, 0x100)]))
PATH_CHARS = "abcXYZ019-._~%!$&'()*+,;=:@/"


@dataclass
class GenRequest:
    """A valid request and the parse it must give."""

    method: str
    target: str
    version: str
    host: str | None
    fields: list[tuple[str, str, str]]  # name, value, how it is written after the colon
    body: bytes
    chunks: list[tuple[int, str, str]] | None  # (size, size text, extensions) or None: CL
    trailers: list[tuple[str, str]]
    keep_alive_field: str | None  # Connection field value, None for none

    def expected_headers(self) -> tuple[tuple[str, str], ...]:
        out: list[tuple[str, str]] = []
        if self.host is not None:
            out.append(("Host", self.host))
        out += [(n, v) for n, v, _ in self.fields]
        if self.keep_alive_field is not None:
            out.append(("Connection", self.keep_alive_field))
        if self.chunks is None:
            if self.body or self.method in ("POST", "PUT"):
                out.append(("Content-Length", str(len(self.body))))
        else:
            out.append(("Transfer-Encoding", "chunked"))
        return tuple(out)

    def keep_alive(self) -> bool:
        token = (self.keep_alive_field or "").lower()
        if self.version == "HTTP/1.1":
            return token != "close"
        return token == "keep-alive"

    def head(self) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}"]
        written = iter([f"{n}:{w}" for n, _, w in self.fields])
        for name, value in self.expected_headers():
            is_field = any(name == n for n, _, _ in self.fields)
            lines.append(next(written) if is_field else f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def encoded_body(self) -> bytes:
        if self.chunks is None:
            return self.body
        out, pos = [], 0
        for size, text, ext in self.chunks:
            out.append(f"{text}{ext}\r\n".encode() + self.body[pos : pos + size] + b"\r\n")
            pos += size
        trailer = "".join(f"{n}: {v}\r\n" for n, v in self.trailers).encode("latin-1")
        return b"".join(out) + b"0\r\n" + trailer + b"\r\n"

    def wire(self) -> bytes:
        return self.head() + self.encoded_body()

    def expected(self) -> Req:
        return Req(
            self.method,
            self.target,
            self.version,
            self.expected_headers(),
            self.body,
            self.keep_alive(),
        )


field_names = st.text(TCHAR, min_size=1, max_size=12).filter(lambda n: n.lower() not in RESERVED)
field_values = st.text(VCHAR_OBS + " \t", max_size=24).map(lambda v: v.strip(" \t"))
ows = st.sampled_from(["", " ", "\t", "  ", " \t"])
extensions = st.lists(
    st.tuples(
        st.text(TCHAR, min_size=1, max_size=6),
        st.none()
        | st.text(TCHAR, min_size=1, max_size=6)
        | st.text("abc ,;=\t", max_size=6).map(lambda s: f'"{s}"'),
    ),
    max_size=2,
).map(lambda exts: "".join(f";{n}" if v is None else f";{n}={v}" for n, v in exts))


@st.composite
def gen_requests(draw: st.DrawFn, *, http10: bool = True) -> GenRequest:
    versions = ["HTTP/1.1", "HTTP/1.0"] if http10 else ["HTTP/1.1"]
    version = draw(st.sampled_from(versions))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = "/" + draw(st.text(PATH_CHARS, max_size=20))
    query = draw(st.none() | st.text(PATH_CHARS + "?", max_size=12))
    target = path if query is None else f"{path}?{query}"
    if draw(st.integers(0, 9)) == 0:
        target = "http://" + draw(st.from_regex(r"\A[a-z][a-z0-9.-]{0,10}\Z")) + target
    host = draw(st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,12}(:[0-9]{1,5})?\Z"))
    if version == "HTTP/1.0" and draw(st.booleans()):
        host = None
    fields = []
    for name, value in draw(st.lists(st.tuples(field_names, field_values), max_size=6)):
        written = draw(ows) + value + (draw(ows) if value else "")
        fields.append((name, value, written))
    body = draw(st.binary(max_size=200))
    chunks = None
    trailers: list[tuple[str, str]] = []
    if version == "HTTP/1.1" and draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        sizes = [b - a for a, b in itertools.pairwise([0, *cuts, len(body)]) if b > a]
        chunks = []
        for size in sizes:
            text = draw(st.sampled_from(["%x", "%X", "0%x", "000%x"])) % size
            chunks.append((size, text, draw(extensions)))
        trailers = draw(st.lists(st.tuples(field_names, field_values), max_size=2))
    connection = draw(st.sampled_from([None, None, "keep-alive", "close"]))
    return GenRequest(method, target, version, host, fields, body, chunks, trailers, connection)


NOISE = [b"\r", b"\n", b"\r\n", b" ", b"\t", b"\x00", b"\x0b", b"\x0c", b",", b";", b":", b"_"]


@st.composite
def damaged_streams(draw: st.DrawFn) -> bytes:
    """Valid streams with bytes inserted, replaced or deleted, or cut short."""
    data = bytearray(b"".join(r.wire() for r in draw(st.lists(gen_requests(), max_size=3))))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data)))
        blob = draw(st.sampled_from(NOISE) | st.binary(min_size=1, max_size=3))
        what = draw(st.sampled_from(["insert", "replace", "delete", "stretch", "lines"]))
        if what == "insert":
            data[pos:pos] = blob
        elif what == "replace":
            data[pos : pos + len(blob)] = blob
        elif what == "delete":
            del data[pos : pos + draw(st.integers(1, 3))]
        elif what == "stretch":  # a long run, to reach the size limits
            data[pos:pos] = draw(st.sampled_from([b"a", b" ", b"\r\n", b"x:y\r\n"])) * draw(
                st.integers(10, 400)
            )
        else:  # many field lines
            data[pos:pos] = b"F: v\r\n" * draw(st.integers(1, 12))
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


# -- uwsgi: the worker's packet path ------------------------------------------------------


@dataclass(frozen=True)
class UwsgiVerdict:
    vars: dict[str, str] | None  # None: no complete request
    body: bytes
    end: str  # "request" | "incomplete" | "error"


def uwsgi_read(stream: bytes, buffer_size: int = 65535) -> UwsgiVerdict:
    """What ``Conn._next_uwsgi`` makes of one connection's bytes (one request, then close)."""
    hs = uwsgi_proto.HEADER_SIZE
    if len(stream) < hs:
        return UwsgiVerdict(None, b"", "incomplete")
    try:
        modifier1, size, _ = uwsgi_proto.parse_header(stream)
        if modifier1 != 0 or size > buffer_size:
            return UwsgiVerdict(None, b"", "error")
        if len(stream) < hs + size:
            return UwsgiVerdict(None, b"", "incomplete")
        variables = uwsgi_proto.parse_vars(stream[hs : hs + size])
        uwsgi_proto.validate_request_vars(variables)
    except uwsgi_proto.UwsgiProtocolError:
        return UwsgiVerdict(None, b"", "error")
    length = int(variables.get("CONTENT_LENGTH") or 0)
    body = stream[hs + size : hs + size + length]
    if len(body) < length:
        return UwsgiVerdict(None, b"", "incomplete")
    return UwsgiVerdict(variables, body, "request")


# -- throwaway installs of test-only tools -------------------------------------------------


def pip(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pip_target(directory: Path, *requirements: str) -> Path:
    """Install requirements into directory, or skip the test with pip's reason."""
    if (directory / ".done").exists():
        return directory
    try:
        result = pip(["install", "-q", "--no-input", "--target", str(directory), *requirements])
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install {' '.join(requirements)} timed out: index unreachable?")
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        pytest.skip(f"cannot install {' '.join(requirements)} from the index: {tail}")
    (directory / ".done").touch()
    return directory


@pytest.fixture(scope="session")
def oracle_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """gunicorn and waitress installed into a throwaway directory, importable for the
    session (appended to sys.path so nothing of the project is shadowed)."""
    site = pip_target(tmp_path_factory.mktemp("oracles"), GUNICORN, WAITRESS)
    sys.path.append(str(site))
    yield site
    sys.path.remove(str(site))


@pytest.fixture(scope="session")
def gunicorn_requests_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gunicorn's tests/requests corpus from its sdist, unpacked into a temp dir."""
    dest = tmp_path_factory.mktemp("gunicorn-sdist")
    try:
        result = pip(["download", "--no-deps", "--no-binary", ":all:", GUNICORN, "-d", str(dest)])
    except subprocess.TimeoutExpired:
        pytest.skip("pip download of the gunicorn sdist timed out: index unreachable?")
    archives = list(dest.glob("gunicorn-*.tar.gz"))
    if result.returncode != 0 or not archives:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        pytest.skip(f"cannot download the gunicorn sdist: {tail}")
    with tarfile.open(archives[0]) as tar:
        members = [m for m in tar.getmembers() if "/tests/requests/" in m.name and m.isfile()]
        tar.extractall(dest, members=members, filter="data")
    found = list(dest.glob("gunicorn-*/tests/requests"))
    assert found, "the gunicorn sdist has no tests/requests directory"
    return found[0]


@pytest.fixture(scope="session")
def atheris_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = pip_target(tmp_path_factory.mktemp("atheris"), ATHERIS)
    probe = subprocess.run(
        [sys.executable, "-c", "import atheris"],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"atheris installed but does not import: {probe.stderr.strip()[-200:]}")
    return site
