"""Echo app of reliability suites B, C and F: the same file runs under muleteer, gunicorn,
waitress and uWSGI, so it imports nothing server-specific.

Every call appends one line ``<pid> <METHOD> <REQUEST_URI>`` to the file named by the
environment variable BCF_CALLS (when set), in a single O_APPEND write: the tests count app
calls and look for smuggled canaries there.

Routes:
- anything not below: JSON of the request (method, target, protocol, every str environ
  value, the body in base64), the body read by CONTENT_LENGTH or to its end; a query
  ``hold=S`` first sleeps S seconds (at most 2), to keep one worker busy;
- /ignorebody: answers without reading the body;
- /resp/<case>: responses that break HTTP on purpose (B5).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

StartResponse = Callable[..., Any]


def _record(environ: dict[str, Any]) -> None:
    path = os.environ.get("BCF_CALLS")
    if not path:
        return
    uri = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    line = f"{os.getpid()} {environ.get('REQUEST_METHOD', '')} {uri}\n".encode("latin-1")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _body(environ: dict[str, Any]) -> bytes:
    length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length.isdigit():
        return bytes(stream.read(int(length)))
    if environ.get("wsgi.input_terminated") or environ.get("HTTP_TRANSFER_ENCODING"):
        return bytes(stream.read())
    return b""


def _json(start_response: StartResponse, payload: dict[str, Any]) -> list[bytes]:
    body = json.dumps(payload, sort_keys=True).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Pid", str(os.getpid())),
        ],
    )
    return [body]


class _Failing:
    """An iterable body that raises after its first chunk, with close() recorded."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"first-chunk;"
        raise RuntimeError("bcf_echo: iterator failed mid-body")


def _broken(case: str, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if case == "shortcl":
        start_response("200 OK", [("Content-Length", "100")])
        return [b"only-ten-b"]
    if case == "longcl":
        start_response("200 OK", [("Content-Length", "5")])
        return [b"0123456789-EXTRA"]
    if case == "longcl-iter":
        start_response("200 OK", [("Content-Length", "5")])
        return iter([b"012", b"3456789-EXTRA"])
    if case == "crlf":
        start_response("200 OK", [("X-Bad", "a\r\nInjected: crlf")])
        return [b"never"]
    if case == "lf":
        start_response("200 OK", [("X-Bad", "a\nInjected: lf")])
        return [b"never"]
    if case == "cr":
        start_response("200 OK", [("X-Bad", "a\rInjected: cr")])
        return [b"never"]
    if case == "nul":
        start_response("200 OK", [("X-Bad", "a\x00Injected: nul")])
        return [b"never"]
    if case == "badname":
        start_response("200 OK", [("X Bad:Injected", "value")])
        return [b"never"]
    if case == "colonname":
        start_response("200 OK", [("Injected: yes\r\nX", "value")])
        return [b"never"]
    if case == "badstatus":
        start_response("200 OK\r\nInjected: status", [])
        return [b"never"]
    if case == "204":
        start_response("204 No Content", [])
        return [b"BODY-ON-204"]
    if case == "304":
        start_response("304 Not Modified", [("ETag", '"x"')])
        return [b"BODY-ON-304"]
    if case == "head":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"BODY-ON-HEAD"]
    if case == "failing":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Failing()
    if case == "failing-cl":
        start_response("200 OK", [("Content-Length", "1000")])
        return _Failing()
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    _record(environ)
    for part in environ.get("QUERY_STRING", "").split("&"):
        if part.startswith("hold="):  # keep this worker busy, so the next request goes to another
            time.sleep(min(float(part[5:]), 2.0))
    path = environ.get("PATH_INFO", "")
    if path == "/ignorebody":
        body = b"ignored"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path.startswith("/resp/"):
        return _broken(path[len("/resp/") :], environ, start_response)
    body = _body(environ)
    strings = {k: v for k, v in environ.items() if isinstance(v, str)}
    return _json(
        start_response,
        {
            "method": environ.get("REQUEST_METHOD"),
            "uri": environ.get("REQUEST_URI"),
            "path": path,
            "query": environ.get("QUERY_STRING"),
            "protocol": environ.get("SERVER_PROTOCOL"),
            "environ": strings,
            "body_b64": base64.b64encode(body).decode(),
            # What uWSGI's magic variables would change in the process (suite C3).
            "process": {
                "cwd": os.getcwd(),
                "bcf_env": sorted(k for k in os.environ if k.startswith("BCF_")),
                "evil_modules": sorted(m for m in sys.modules if m.startswith("bcf_evil")),
            },
        },
    )
