"""One client connection in a worker: buffering, request framing, and the WSGI environ.

The worker's loop reads whatever is ready into ``Conn.buf`` and asks ``next_request()``
for a complete request. Nothing here blocks the loop: a request is handed to the app only
once its head and its body are buffered (bodies above a threshold go to a temporary
file), so a slow client costs a buffer, never the worker. The one exception is
``Expect: 100-continue``: the app gets a streaming ``wsgi.input`` that sends the interim
100 response when it first reads, so a body the app does not want is never uploaded.
"""

from __future__ import annotations

import _socket
import io
import select
import socket
import time
from collections.abc import Callable
from typing import IO, Any

from muleteer import http, uwsgi_proto, wsgi
from muleteer.http import ChunkedDecoder, HttpError, Limits, RequestHead

# Client sockets stay in blocking mode (one fcntl fewer per connection); every call on
# them passes MSG_DONTWAIT instead, so none of them can block the worker.
_DONTWAIT = socket.MSG_DONTWAIT
MEMORY_BODY = 1 << 20  # bodies above this (or post-buffering) are spooled to a file
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ProtocolFailure(Exception):
    """The connection must be answered with `response` (if any) and closed."""

    def __init__(self, reason: str, response: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


def http_failure(exc: HttpError) -> ProtocolFailure:
    reasons = {
        400: "Bad Request",
        413: "Content Too Large",
        414: "URI Too Long",
        431: "Request Header Fields Too Large",
        501: "Not Implemented",
        505: "HTTP Version Not Supported",
    }
    status = f"{exc.status} {reasons.get(exc.status, 'Bad Request')}"
    return ProtocolFailure(exc.reason, wsgi.error_response(status))


class Request:
    __slots__ = ("environ", "head_only", "keep_alive", "protocol", "stream", "version")

    def __init__(
        self,
        environ: dict[str, Any],
        version: str,
        keep_alive: bool,
        head_only: bool,
        protocol: str,
        stream: StreamingInput | None,
    ) -> None:
        self.environ = environ
        self.version = version
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.protocol = protocol
        self.stream = stream


class BodySink:
    """Collects a body: in memory up to a threshold, then in an unnamed temporary file."""

    __slots__ = ("file", "memory", "size", "threshold")

    def __init__(self, threshold: int) -> None:
        self.memory = bytearray()
        self.file: IO[bytes] | None = None
        self.size = 0
        self.threshold = threshold

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if self.file is not None:
            self.file.write(data)
            return
        self.memory += data
        if len(self.memory) > self.threshold:
            import tempfile  # only bodies this large pay for the import

            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the body
            self.file.write(self.memory)
            self.memory = bytearray()

    def input(self) -> IO[bytes]:
        if self.file is not None:
            self.file.seek(0)
            return self.file
        return io.BytesIO(self.memory)


class Conn:
    """Per-connection state owned by one worker."""

    __slots__ = (
        "base",
        "buf",
        "chunked",
        "closed",
        "deadline",
        "fd",
        "head",
        "limits",
        "memory_body",
        "nodelay",
        "peer",
        "protocol",
        "remaining",
        "sends",
        "served",
        "sink",
        "sock",
        "tcp",
        "trust_forwarded",
        "uwsgi_vars",
        "write_timeout",
    )

    def __init__(
        self,
        sock: _socket.socket,
        peer: tuple[str, str],
        protocol: str,
        base: dict[str, Any],
        limits: Limits,
        trust_forwarded: bool,
        memory_body: int = MEMORY_BODY,
    ) -> None:
        self.sock = sock
        self.memory_body = memory_body  # bodies above this are spooled to a temporary file
        self.tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self.nodelay = False
        self.sends = 0
        self.write_timeout = 4.0
        self.fd = sock.fileno()
        self.peer = peer  # (REMOTE_ADDR, REMOTE_PORT)
        self.protocol = protocol
        self.base = base
        self.limits = limits
        self.trust_forwarded = trust_forwarded
        self.buf = bytearray()
        self.head: RequestHead | None = None
        self.uwsgi_vars: dict[str, str] | None = None
        self.remaining = 0
        self.chunked: ChunkedDecoder | None = None
        self.sink: BodySink | None = None
        self.deadline = 0.0
        self.served = 0
        self.closed = False

    # -- HTTP ------------------------------------------------------------------------------

    def _feed_counted(self, sink: BodySink) -> bool:
        """Move up to `remaining` buffered bytes of a counted body into `sink`; True once
        the whole body is in."""
        take = min(self.remaining, len(self.buf))
        if take:
            sink.write(memoryview(self.buf)[:take])
            del self.buf[:take]
            self.remaining -= take
        return not self.remaining

    def _http_request(self, stream: StreamingInput | None) -> Request:
        head = self.head
        assert head is not None
        environ = self.base.copy()
        environ["REQUEST_METHOD"] = head.method
        environ["REQUEST_URI"] = head.uri
        environ["PATH_INFO"] = wsgi.decode_path(head.path)
        environ["QUERY_STRING"] = head.query
        environ["SERVER_PROTOCOL"] = head.version
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = self.peer
        wsgi.add_headers(environ, head.headers, self.trust_forwarded)
        if stream is not None:
            environ["wsgi.input"] = stream
            environ["wsgi.input_terminated"] = True
        elif self.sink is not None:
            environ["wsgi.input"] = self.sink.input()
            if head.chunked:
                # The whole body is buffered already: tell apps that trust CONTENT_LENGTH.
                environ["CONTENT_LENGTH"] = str(self.sink.size)
                environ["wsgi.input_terminated"] = True
        else:
            environ["wsgi.input"] = io.BytesIO()
        self.head = None
        self.sink = None
        self.chunked = None
        return Request(
            environ, head.version, head.keep_alive, head.method == "HEAD", "http", stream
        )

    def _next_http(self) -> Request | None:
        if self.head is None:
            end = http.scan_head(self.buf, self.limits)
            if end < 0:
                return None
            head = http.parse_head(bytes(self.buf[:end]), self.limits)
            del self.buf[:end]
            self.head = head
            limit = self.limits.limit_post
            if head.content_length is not None and limit and head.content_length > limit:
                raise HttpError(413, f"Content-Length {head.content_length} > limit-post {limit}")
            if head.chunked:
                self.chunked = ChunkedDecoder(self.limits)
            elif head.content_length:
                self.remaining = head.content_length
            else:
                return self._http_request(None)
            if head.expect_continue:
                return self._http_request(StreamingInput(self))
            self.sink = BodySink(self.memory_body)
        sink = self.sink
        assert sink is not None
        if self.chunked is not None:
            body, used = self.chunked.feed(self.buf)
            del self.buf[:used]
            if body:
                sink.write(body)
            if not self.chunked.done:
                return None
        elif not self._feed_counted(sink):
            return None
        return self._http_request(None)

    # -- uwsgi protocol --------------------------------------------------------------------

    def _next_uwsgi(self) -> Request | None:
        if self.uwsgi_vars is None:
            if len(self.buf) < uwsgi_proto.HEADER_SIZE:
                return None
            modifier1, size, _ = uwsgi_proto.parse_header(self.buf)
            if modifier1 != 0:
                raise ProtocolFailure(f"unavailable modifier requested: {modifier1}")
            if size > self.limits.buffer_size:
                raise ProtocolFailure(
                    f"invalid request block size: {size} (max {self.limits.buffer_size})...skip"
                )
            if len(self.buf) < uwsgi_proto.HEADER_SIZE + size:
                return None
            block = bytes(self.buf[uwsgi_proto.HEADER_SIZE : uwsgi_proto.HEADER_SIZE + size])
            del self.buf[: uwsgi_proto.HEADER_SIZE + size]
            try:
                variables = uwsgi_proto.parse_vars(block)
                uwsgi_proto.validate_request_vars(variables)
            except uwsgi_proto.UwsgiProtocolError as exc:
                raise ProtocolFailure(f"invalid uwsgi request: {exc}") from None
            length = int(variables.get("CONTENT_LENGTH") or 0)
            limit = self.limits.limit_post
            if limit and length > limit:
                raise ProtocolFailure(
                    f"Content-Length {length} > limit-post {limit}",
                    wsgi.error_response("413 Content Too Large", "HTTP/1.0"),
                )
            self.uwsgi_vars = variables
            self.remaining = length
            self.sink = BodySink(self.memory_body) if length else None
        sink = self.sink
        if sink is not None and not self._feed_counted(sink):
            return None
        variables = self.uwsgi_vars
        self.uwsgi_vars = None
        self.sink = None
        # The body ends the packet: whatever follows is never parsed as another request
        # (uWSGI issue #2336). nginx opens one connection per request anyway.
        self.buf.clear()
        environ = self.base.copy()
        environ.update(variables)
        # nginx also sends the body headers as HTTP_CONTENT_LENGTH/TYPE; PEP 3333 (and
        # wsgiref.validate) want them only unprefixed.
        environ.pop("HTTP_CONTENT_LENGTH", None)
        environ.pop("HTTP_CONTENT_TYPE", None)
        environ.setdefault("PATH_INFO", "/")
        environ.setdefault("QUERY_STRING", "")
        environ.setdefault("SERVER_PROTOCOL", "HTTP/1.0")
        wsgi.uwsgi_scheme(environ)
        environ["wsgi.input"] = sink.input() if sink is not None else io.BytesIO()
        version = environ["SERVER_PROTOCOL"]
        method = environ["REQUEST_METHOD"]
        return Request(environ, version, False, method == "HEAD", "uwsgi", None)

    def next_request(self) -> Request | None:
        """A complete request from the buffer, or None when more bytes are needed.
        Raises ProtocolFailure when the connection must be answered and closed."""
        try:
            if self.protocol == "http":
                return self._next_http()
            return self._next_uwsgi()
        except HttpError as exc:
            raise http_failure(exc) from None

    def send_all(self, data: bytes) -> None:
        """Write all of `data`, waiting (up to the socket timeout) when the peer is slow."""
        if self.sends and not self.nodelay and self.tcp:
            # A second write on this connection: from now on Nagle's algorithm could hold
            # small segments back until the peer's (delayed) ACK. The first write of a
            # connection is never delayed, so connection-per-request traffic skips this
            # system call entirely.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.nodelay = True
        self.sends += 1
        sock = self.sock
        try:
            sent = sock.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            try:
                sent = sock.send(view, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                poller = select.poll()
                poller.register(self.fd, select.POLLOUT)
                if not poller.poll(int(self.write_timeout * 1000)):
                    raise TimeoutError(
                        f"client did not read for {self.write_timeout:g} s"
                    ) from None
                continue
            view = view[sent:]

    def mid_request(self) -> bool:
        """True when bytes of an unfinished request are buffered or expected."""
        return bool(self.buf) or self.head is not None or self.uwsgi_vars is not None


class StreamingInput(io.RawIOBase):
    """``wsgi.input`` for ``Expect: 100-continue``: reads the body from the socket on demand.

    Never returns bytes past the end of the body, so the next pipelined request is intact.
    """

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.continued = False
        self.done = False
        self.timeout = 4.0
        self.send: Callable[[bytes], None] | None = None
        self._pending = b""

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        conn = self.conn
        if not self.continued:
            self.continued = True
            if self.send is not None:
                self.send(CONTINUE)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                data = conn.sock.recv(65536, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("client too slow sending the request body") from None
                select.select([conn.sock], [], [], remaining)
                continue
            if not data:
                raise ConnectionError("client closed the connection in the request body")
            conn.buf += data
            return True

    def _take(self) -> bytes:
        """Decoded body bytes already buffered (b'' when none)."""
        conn = self.conn
        if conn.chunked is not None:
            body, used = conn.chunked.feed(conn.buf)
            del conn.buf[:used]
            if conn.chunked.done:
                self.done = True
            return bytes(body)
        take = min(conn.remaining, len(conn.buf))
        data = bytes(conn.buf[:take])
        del conn.buf[:take]
        conn.remaining -= take
        if conn.remaining == 0:
            self.done = True
        return data

    def read(self, size: int | None = -1) -> bytes:
        want = -1 if size is None or size < 0 else size
        out = bytearray(self._pending)
        self._pending = b""
        while (want < 0 or len(out) < want) and not self.done:
            got = self._take()
            if got:
                out += got
            elif not self.done:
                self._fill()
        if want >= 0 and len(out) > want:
            self._pending = bytes(out[want:])
            del out[want:]
        return bytes(out)

    def readline(self, size: int | None = -1) -> bytes:
        out = bytearray()
        while True:
            chunk = self.read(1)
            if not chunk:
                break
            out += chunk
            if chunk == b"\n" or (size is not None and 0 <= size <= len(out)):
                break
        return bytes(out)

    def reusable(self) -> bool:
        """Whether the connection can be kept once the app is done: known before the
        response head is sent, so the head can say ``Connection: close`` when it cannot."""
        if self.done:
            return True
        if not self.continued:
            return False  # the client still waits for 100 Continue: never read its body
        conn = self.conn
        return conn.chunked is None and conn.remaining - len(conn.buf) <= 65536

    def finish(self) -> bool:
        """After the app: True when the connection can be reused (body fully consumed
        or drained, up to 64 KiB within 1 s); otherwise the caller closes it."""
        if self.done:
            return True
        if not self.continued:
            return False  # the client still waits for 100 Continue: never read its body
        self.timeout = 1.0
        drained = 0
        try:
            while not self.done and drained < 65536:
                drained += len(self.read(8192))
        except (OSError, HttpError):
            return False
        return self.done
