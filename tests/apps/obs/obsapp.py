"""The observability tests' app: every stats section has something in it.

Registered in the master at import (so every worker and mule has the handlers):
signal 30 -> mule1 (signal-only), 31 -> the farm "f", 40 -> a 1 s timer for any worker,
41 -> a cron every minute, 42 -> a file monitor on $OBS_WATCH and 43 -> an rb_timer.
Mule messages get a hook, so the signal-only mule handles them without warnings.

Paths: ``/`` answers pid and worker id; ``/raise?num=N&k=K`` raises N K times;
``/msg?mule=M&m=COUNT&size=BYTES`` sends COUNT messages to mule M and answers how many
``mule_msg`` calls returned True and False; ``/env?name=NAME`` answers an environment
variable of the worker; ``/hold?until=PATH`` answers once PATH exists (10 s at most).
"""

import json
import os
import time
from urllib.parse import parse_qs

import uwsgi


def noop(signum):
    return None


uwsgi.register_signal(30, "mule1", noop)
uwsgi.register_signal(31, "farm_f", noop)
uwsgi.register_signal(40, "worker", noop)
uwsgi.add_timer(40, 1)
uwsgi.register_signal(41, "worker", noop)
uwsgi.add_cron(41, -1, -1, -1, -1, -1)
uwsgi.register_signal(43, "worker", noop)
uwsgi.add_rb_timer(43, 3600)
if os.environ.get("OBS_WATCH"):
    uwsgi.register_signal(42, "workers", noop)
    uwsgi.add_file_monitor(42, os.environ["OBS_WATCH"])

uwsgi.mule_msg_hook = lambda message: None


def _answer(start_response, payload):
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


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/raise":
        count = int(query.get("k", "1"))
        for _ in range(count):
            uwsgi.signal(int(query["num"]))
        return _answer(start_response, {"raised": count})
    if path == "/msg":
        sent = refused = 0
        payload = b"m" * int(query.get("size", "16"))
        for _ in range(int(query.get("m", "1"))):
            if uwsgi.mule_msg(payload, int(query["mule"])):
                sent += 1
            else:
                refused += 1
        return _answer(start_response, {"true": sent, "false": refused})
    if path == "/hold":
        deadline = time.monotonic() + 10
        while not os.path.exists(query["until"]) and time.monotonic() < deadline:
            time.sleep(0.005)
        return _answer(start_response, {"held": True})
    if path == "/env":
        return _answer(start_response, {"value": os.environ.get(query["name"])})
    return _answer(start_response, {"pid": os.getpid(), "worker": uwsgi.worker_id()})
