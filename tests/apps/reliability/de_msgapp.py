"""Suite E: an app that sends numbered mule messages and says what each call returned.

It runs unchanged under muleteer and under uWSGI 2.0 (the anchor of E1): a message is the
decimal id ``b"%d" % i``; ``block``/``timeout`` (muleteer's keywords) are passed only
when asked for.

* ``GET /send?start=S&n=N[&target=T][&block=1][&timeout=SECONDS]``: ``mule_msg`` for ids
  S..S+N-1; answers ``{"rejected": [ids not accepted], "returned": {type: count},
  "elapsed": seconds}``.
* ``GET /ctl?msg=TEXT[&target=T]``: one control message (``PAUSE:<seconds>``).

With ``HOOK=poison`` the module also installs ``uwsgi.mule_msg_hook`` for signal-only
mules: it raises on the message ``POISON`` and appends "<message> <pid>" to ``OUT`` for
every other one.
"""

import json
import os
import time
from urllib.parse import parse_qs

import uwsgi

if os.environ.get("HOOK") == "poison":
    OUT = os.environ["OUT"]
    POISON = os.environ["POISON"].encode()

    def hook(message):
        if message == POISON:
            raise RuntimeError(f"poison message {message!r}")
        fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, message + b" %d\n" % os.getpid())
        finally:
            os.close(fd)

    uwsgi.mule_msg_hook = hook


def send_one(message, target, query):
    if query.get("block", ["0"])[0] == "1":
        timeout = float(query["timeout"][0]) if "timeout" in query else None
        return uwsgi.mule_msg(message, target, block=True, timeout=timeout)
    return uwsgi.mule_msg(message, target)


def application(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    target = int(query.get("target", ["1"])[0])
    if environ["PATH_INFO"] == "/send":
        start = int(query.get("start", ["0"])[0])
        rejected, returned = [], {}
        began = time.monotonic()
        for i in range(start, start + int(query.get("n", ["1"])[0])):
            value = send_one(b"%d" % i, target, query)
            kind = type(value).__name__
            returned[kind] = returned.get(kind, 0) + 1
            if value is not True:
                rejected.append(i)
        payload = {"rejected": rejected, "returned": returned, "elapsed": time.monotonic() - began}
    elif environ["PATH_INFO"] == "/ctl":
        payload = {"returned": send_one(query["msg"][0].encode(), target, query)}
    else:
        payload = {"pid": os.getpid()}
    body = json.dumps(payload).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
