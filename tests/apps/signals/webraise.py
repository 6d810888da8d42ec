"""The web side shared by the signal test apps.

* ``/raise?n=N&count=C`` raises signal N C times back to back (default once) and answers
  with the time it started raising;
* ``/register?n=N&target=T`` registers a marking handler for N in this worker, after fork;
* ``/facade`` describes the ``uwsgi`` module's values and types as JSON.

Every answer names the worker and pid that served it.
"""

import json
import os
import time
from urllib.parse import parse_qs

import uwsgi
from marks import handler


def facade():
    try:
        uwsgi.cache_get("key")
        missing = "no error"
    except AttributeError as exc:
        missing = str(exc)
    workers = uwsgi.workers()
    return {
        "opt": {key: repr(value) for key, value in uwsgi.opt.items()},
        "opt_key_types": sorted({type(key).__name__ for key in uwsgi.opt}),
        "opt_value_types": sorted({type(value).__name__ for value in uwsgi.opt.values()}),
        "version": repr(uwsgi.version),
        "numproc": repr(uwsgi.numproc),
        "masterpid": uwsgi.masterpid(),
        "registered": repr(uwsgi.signal_registered(20)),
        "unregistered": repr(uwsgi.signal_registered(200)),
        "workers_type": type(workers).__name__,
        "workers_entry_types": sorted({type(entry).__name__ for entry in workers}),
        "workers_status": [repr(entry["status"]) for entry in workers],
        "workers_pids": [entry["pid"] for entry in workers],
        "missing": missing,
    }


def application(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    path = environ["PATH_INFO"]
    payload = {"worker": uwsgi.worker_id(), "pid": os.getpid()}
    if path == "/raise":
        num = int(query["n"][0])
        payload["raised_at"] = time.time()
        for _ in range(int(query.get("count", ["1"])[0])):
            uwsgi.signal(num)
    elif path == "/register":
        num = int(query["n"][0])
        uwsgi.register_signal(num, query["target"][0], handler(f"late{num}"))
    elif path == "/facade":
        payload.update(facade())
    body = json.dumps(payload).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
