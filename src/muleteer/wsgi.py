"""WSGI: environ building, ``start_response`` and response framing, for both protocols.

The response rules (RFC 9112 and PEP 3333):
- Content-Length from the app is trusted for framing; a body that turns out shorter or
  longer than it closes the connection afterwards, so the next response is never mis-framed.
- Without Content-Length, a body of a single buffer gets one; otherwise HTTP/1.1 uses
  chunked encoding and HTTP/1.0 (and the uwsgi protocol, which nginx reads to EOF) ends
  the body by closing the connection.
- HEAD, 1xx, 204 and 304 responses carry no body.
- Header names must be tokens and values free of CR, LF and NUL (response splitting,
  CVE-2018-1000164, CVE-2020-7695): ``start_response`` refuses them, which turns into a 500.
"""

from __future__ import annotations

import io
import logging
import os
import re
import select
import sys
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00\r\n]")
_STATUS = re.compile(r"[1-9][0-9][0-9] ")
_NO_BODY_STATUS = ("1", "204", "304")

FORWARDED_HEADERS = frozenset(
    {
        "HTTP_X_FORWARDED_FOR",
        "HTTP_X_FORWARDED_PROTO",
        "HTTP_X_FORWARDED_HOST",
        "HTTP_X_FORWARDED_PORT",
        "HTTP_X_FORWARDED_SSL",
        "HTTP_X_FORWARDED_SCHEME",
        "HTTP_X_REAL_IP",
        "HTTP_FORWARDED",
    }
)

SendAll = Callable[[bytes], None]


class HeaderError(ValueError):
    """An invalid status line or header from the application."""


class FileWrapper:
    """``wsgi.file_wrapper``: iterable over a file; sent with ``sendfile`` when possible."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return bytes(data)
        raise StopIteration


_environ_key_cache: dict[str, str] = {}


def environ_key(name: str) -> str:
    key = _environ_key_cache.get(name)
    if key is None:
        upper = name.upper().replace("-", "_")
        key = upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + upper
        if len(_environ_key_cache) < 4096:
            _environ_key_cache[name] = key
    return key


def base_environ(server_name: str, server_port: str, multithread: bool) -> dict[str, Any]:
    """The keys that are the same for every request on one listener."""
    return {
        "SCRIPT_NAME": "",
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        "uwsgi.version": b"2.0.31",
    }


def decode_path(raw: str) -> str:
    if "%" not in raw:
        return raw
    from urllib.parse import unquote_to_bytes  # imported by the first encoded path only

    return unquote_to_bytes(raw).decode("latin-1")


def add_headers(
    environ: dict[str, Any], headers: Iterable[tuple[str, str]], trust_forwarded: bool
) -> None:
    for name, value in headers:
        key = environ_key(name)
        if key in environ:
            separator = "; " if key == "HTTP_COOKIE" else ", "
            environ[key] = environ[key] + separator + value
        else:
            environ[key] = value
    if not trust_forwarded:
        for key in FORWARDED_HEADERS.intersection(environ):
            del environ[key]
    elif environ.get("HTTP_X_FORWARDED_PROTO", "").lower() == "https":
        environ["wsgi.url_scheme"] = "https"


def uwsgi_scheme(environ: dict[str, Any]) -> None:
    """uWSGI's vars: HTTPS=on|1... or UWSGI_SCHEME set the URL scheme."""
    https = environ.get("HTTPS", "")
    if https.lower() == "on" or https.startswith("1"):
        environ["wsgi.url_scheme"] = "https"
    scheme = environ.get("UWSGI_SCHEME")
    if scheme in ("http", "https"):
        environ["wsgi.url_scheme"] = scheme


_checked: set[tuple[str, str]] = set()  # header pairs already found valid


def check_headers(status: str, headers: list[tuple[str, str]]) -> None:
    if not isinstance(status, str) or not _STATUS.match(status) or _BAD_VALUE.search(status):
        raise HeaderError(f"invalid status line {status!r}")
    for item in headers:
        if item in _checked:
            continue  # apps send the same few headers again and again
        if not isinstance(item, tuple) or len(item) != 2:
            raise HeaderError(f"header {item!r} is not a (name, value) tuple")
        name, value = item
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise HeaderError(f"invalid header name {name!r}")
        if not isinstance(value, str) or _BAD_VALUE.search(value):
            raise HeaderError(f"invalid value for header {name!r}: {value!r}")
        if len(_checked) < 4096 and type(name) is str and type(value) is str:
            _checked.add(item)


class Exchange:
    """One request and its response: ``start_response``, ``write`` and framing."""

    __slots__ = (
        "chunked",
        "close_after",
        "content_length",
        "head_only",
        "headers",
        "headers_sent",
        "keep_alive",
        "no_body",
        "protocol",
        "reusable",
        "send_all",
        "sent_body",
        "status",
        "tx",
        "version",
    )

    def __init__(
        self, send_all: SendAll, version: str, keep_alive: bool, head_only: bool, protocol: str
    ) -> None:
        self.send_all = send_all
        self.version = version  # "HTTP/1.1", "HTTP/1.0"
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.protocol = protocol  # "http" or "uwsgi"
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.content_length: int | None = None
        self.chunked = False
        self.close_after = not keep_alive
        self.no_body = head_only
        self.reusable: Callable[[], bool] | None = None  # the request body's verdict
        self.sent_body = 0
        self.tx = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        check_headers(status, headers)
        self.status = status
        self.headers = headers
        return self.write

    def _head(self, body_len: int | None) -> bytes:
        status = self.status
        assert status is not None
        if self.reusable is not None and not self.reusable():
            self.close_after = True
        no_body = self.head_only or status.startswith(_NO_BODY_STATUS)
        lines = [f"{self.version} {status}\r\n"]
        length: int | None = None
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise HeaderError(f"invalid Content-Length {value!r}") from None
                if length < 0:
                    raise HeaderError(f"invalid Content-Length {value!r}")
                continue
            elif lower == "connection":
                if "close" in value.lower():
                    self.close_after = True
                continue  # we decide the connection's fate ourselves
            elif lower == "transfer-encoding":
                continue  # framing is the server's job (PEP 3333 hop-by-hop)
            lines.append(f"{name}: {value}\r\n")
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif no_body:
            pass
        elif body_len is not None:
            length = body_len
            lines.append(f"Content-Length: {length}\r\n")
        elif self.protocol == "http" and self.version == "HTTP/1.1":
            self.chunked = True
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            self.close_after = True  # the end of the body is the end of the connection
        self.no_body = no_body
        self.content_length = length
        if self.protocol == "http":
            if self.close_after:
                lines.append("Connection: close\r\n")
            elif self.version == "HTTP/1.0":
                lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def _send_body(self, data: bytes, head: bytes = b"") -> None:
        if self.no_body:
            data = b""
        elif self.content_length is not None and data:
            room = self.content_length - self.sent_body
            if len(data) > room:
                data = data[:room]
                self.close_after = True  # the app sent more than it declared
        self.sent_body += len(data)
        if self.chunked and data:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        out = head + data if head else data
        if out:
            self.send_all(out)
            self.tx += len(out)

    def write(self, data: bytes) -> None:
        """The ``write`` callable of ``start_response`` (and the path of every body chunk)."""
        if self.status is None:
            raise AssertionError("write() before start_response()")
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"response body items must be bytes, not {type(data).__name__}")
        if not self.headers_sent:
            head = self._head(None)
            self.headers_sent = True
            self._send_body(bytes(data), head)
        elif data:
            self._send_body(bytes(data))

    def send_single(self, data: bytes) -> None:
        """The whole body is one buffer: head and body go out in one send()."""
        if self.status is None:
            raise AssertionError("the app returned without calling start_response()")
        if not self.headers_sent:
            head = self._head(len(data))
            self.headers_sent = True
            self._send_body(data, head)
        else:
            self._send_body(data)

    def finish(self) -> None:
        """Send what is still owed: the head of an empty body, the last chunk."""
        if not self.headers_sent:
            self.send_single(b"")
            return
        if self.chunked:
            self.send_all(b"0\r\n\r\n")
            self.tx += 5
        length = self.content_length
        if not self.no_body and length is not None and self.sent_body < length:
            self.close_after = True  # short body: the client must not reuse the connection

    def try_sendfile(self, wrapper: FileWrapper, out_fd: int, timeout: float) -> bool:
        """Send a file_wrapper body with sendfile(2) when it is a real file of known size."""
        filelike = wrapper.filelike
        try:
            fd = filelike.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return False
        if self.status is None or self.headers_sent or self.head_only:
            return False
        try:
            offset = filelike.tell()
            size = os.fstat(fd).st_size - offset
        except OSError:
            return False
        head = self._head(size)
        self.headers_sent = True
        count = size if self.content_length is None else min(size, self.content_length)
        self.send_all(head)
        self.tx += len(head)
        sent = 0
        os.set_blocking(out_fd, False)  # sendfile has no MSG_DONTWAIT
        while sent < count:
            try:
                chunk = os.sendfile(out_fd, fd, offset + sent, count - sent)
            except (BlockingIOError, InterruptedError):
                poller = select.poll()
                poller.register(out_fd, select.POLLOUT)
                if not poller.poll(int(timeout * 1000)):
                    raise TimeoutError(f"client did not read for {timeout:g} s") from None
                continue
            if chunk == 0:
                break  # the file shrank: the short body closes the connection (finish)
            sent += chunk
        self.sent_body += sent
        self.tx += sent
        return True


def error_response(status: str, version: str = "HTTP/1.1", body: bytes | None = None) -> bytes:
    """A complete response the server sends on its own (400, 413, 500, 504...)."""
    text = body if body is not None else status.encode("latin-1") + b"\n"
    return (
        f"{version} {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(text)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1") + text
