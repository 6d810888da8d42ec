"""A routing test app: each path exercises one server behaviour.

Every response carries the worker's pid and id (X-Pid, X-Worker) so tests can tell which
process answered. MARKS (env var) names a file where /mark appends lines.
"""

import json
import os
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

import uwsgi

STARTED = time.time()


def _json(start_response, payload, status="200 OK"):
    body = json.dumps(payload).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Pid", str(os.getpid())),
            ("X-Worker", str(uwsgi.worker_id())),
        ],
    )
    return [body]


def echo(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    keys = {k: v for k, v in environ.items() if isinstance(v, str)}
    return _json(
        start_response,
        {"environ": keys, "body": body.decode("latin-1"), "url_scheme": environ["wsgi.url_scheme"]},
    )


def core(environ, start_response):
    path = environ["PATH_INFO"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path.startswith("/echo"):
        return echo(environ, start_response)
    if path == "/slow":
        time.sleep(float(query.get("s", ["1"])[0]))
        return _json(start_response, {"slept": True})
    if path == "/slowstream":

        def gen():
            yield b"first\n"
            time.sleep(float(query.get("s", ["1"])[0]))
            yield b"second\n"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/chunked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"a" * 10, b"b" * 20, b"", b"c" * 30])
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written;")
        return [b"returned"]
    if path == "/nocontent":
        start_response("204 No Content", [])
        return [b"should not be sent"]
    if path == "/notmodified":
        start_response("304 Not Modified", [("ETag", "x")])
        return []
    if path == "/badheader":
        start_response("200 OK", [("X-Bad", "a\r\nInjected: yes")])
        return [b"never"]
    if path == "/error":
        raise RuntimeError("boom in the app")
    if path == "/shortcl":
        start_response("200 OK", [("Content-Length", "100")])
        return [b"only ten b"]
    if path == "/longcl":
        start_response("200 OK", [("Content-Length", "5")])
        return [b"0123456789"]
    if path == "/sendfile":
        name = query["f"][0]
        handle = open(name, "rb")  # noqa: SIM115 - closed by the server via file_wrapper
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](handle, 8192)
    if path == "/big":
        size = int(query.get("n", ["1000000"])[0])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"x" * size]
    if path == "/ignorebody":
        return _json(start_response, {"ignored": True})
    if path == "/mark":
        with open(os.environ["MARKS"], "a") as handle:
            handle.write(f"{query.get('m', ['x'])[0]} {os.getpid()}\n")
        return _json(start_response, {"marked": True})
    if path == "/leak":
        globals().setdefault("LEAK", []).append(b"x" * (int(query.get("mb", ["10"])[0]) << 20))
        return _json(start_response, {"leaked": len(globals()["LEAK"])})
    if path == "/opt":
        opt = {
            k: (
                v.decode()
                if isinstance(v, bytes)
                else v
                if not isinstance(v, list)
                else [x.decode() if isinstance(x, bytes) else x for x in v]
            )
            for k, v in uwsgi.opt.items()
        }
        return _json(
            start_response,
            {"opt": opt, "types": {k: type(v).__name__ for k, v in uwsgi.opt.items()}},
        )
    return _json(
        start_response,
        {
            "pid": os.getpid(),
            "worker": uwsgi.worker_id(),
            "mule": uwsgi.mule_id(),
            "started": STARTED,
        },
    )


validated = validator(core)


def application(environ, start_response):
    # wsgiref.validate checks both the server (environ, start_response, iteration) and
    # the app; paths that break WSGI on purpose skip it.
    if environ["PATH_INFO"] in (
        "/badheader",
        "/error",
        "/shortcl",
        "/longcl",
        "/sendfile",
        "/nocontent",
        "/notmodified",
    ):
        return core(environ, start_response)
    return validated(environ, start_response)
