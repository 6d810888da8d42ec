"""Suite D10: a signal storm from the workers to a mule.

The app is imported by the master (no lazy-apps), so mule 1 inherits both handlers:
signal 30 (target ``mule1``) counts, signal 31 (target ``mule1``) appends
"<pid> <count>" to the file named by ``DE_OUT``. Both travel on the same channel, in
order, so a report raised after the storm has drained counts every storm signal the mule
ran.

* ``GET /storm?n=N``: ``uwsgi.signal(30)`` N times; answers how many calls returned.
* ``GET /report``: ``uwsgi.signal(31)``.
* anything else: 200 with the worker's pid.
"""

import json
import os
from urllib.parse import parse_qs

import uwsgi

OUT = os.environ["DE_OUT"]
STORM = 30
REPORT = 31
handled = [0]


def count(num):
    handled[0] += 1


def report(num):
    with open(OUT, "a") as handle:
        handle.write(f"{os.getpid()} {handled[0]}\n")


uwsgi.register_signal(STORM, "mule1", count)
uwsgi.register_signal(REPORT, "mule1", report)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/storm":
        sent = 0
        for _ in range(int(query["n"][0])):
            uwsgi.signal(STORM)
            sent += 1
        payload = {"sent": sent}
    elif path == "/report":
        uwsgi.signal(REPORT)
        payload = {"raised": REPORT}
    else:
        payload = {"pid": os.getpid()}
    body = json.dumps(payload).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Pid", str(os.getpid())),
        ],
    )
    return [body]
