"""Suites D and E: a tiny app that answers with its process id (body and X-Pid).

It does not need the ``uwsgi`` module, so gunicorn (the anchor) runs it unchanged.
``/slow?s=N`` sleeps N seconds first.
"""

import os
import time
from urllib.parse import parse_qs


def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        time.sleep(float(query.get("s", ["1"])[0]))
    body = str(os.getpid()).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-Pid", body.decode()),
        ],
    )
    return [body]
