"""The WSGI app of the mule tests: endpoints that send mule messages and raise signals.

Environment: ``HOOK`` = ``attr`` (sets ``uwsgi.mule_msg_hook``), ``install``
(``uwsgi.install_mule_msg_hook``), ``both`` or ``none``; ``DECORATED=1`` imports
``mule_decorated`` (uwsgidecorators: ``@signal`` handlers for mules, ``@mulefunc``).

* ``GET /ids``: worker id, mule id, pid and ``in_farm`` answers of the worker.
* ``POST /ops``: a JSON list of calls to run (see :func:`run_op`); returns their results.
* ``GET /burst?n=&size=&target=&block=``: send n numbered messages, count True/False.
* ``GET /signal?num=N``: ``uwsgi.signal(N)``.
* ``GET /mulefunc?kind=any|two|grp&tag=T``: call a ``@mulefunc`` function.
"""

import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

import uwsgi
from marks import describe, record

HOOK = os.environ.get("HOOK", "none")

if HOOK in ("attr", "both"):

    def attr_hook(message: bytes) -> None:
        record("hook", hook="attr", **describe(message))

    uwsgi.mule_msg_hook = attr_hook

if HOOK in ("install", "both"):

    def installed_hook(message: bytes) -> None:
        record("hook", hook="install", **describe(message))

    uwsgi.install_mule_msg_hook(installed_hook)

if os.environ.get("DECORATED"):
    import mule_decorated
else:
    mule_decorated = None


def message_of(spec: dict[str, Any], i: int) -> str | bytes:
    if "str" in spec:
        return spec["str"].replace("{i}", str(i))
    if "bytes" in spec:
        return spec["bytes"].replace("{i}", str(i)).encode("latin-1")
    return spec.get("fill", "x").encode() * spec["size"]


def target_of(spec: dict[str, Any]) -> Any:
    if "int" in spec:
        return spec["int"]
    if "str" in spec:
        return spec["str"]
    return spec["bytes"].encode("latin-1")


def outcome(value: Any) -> dict[str, Any]:
    if value is None or isinstance(value, bool | int | str):
        return {"value": value, "type": type(value).__name__}
    return {"value": repr(value), "type": type(value).__name__}


def run_op(op: dict[str, Any]) -> dict[str, Any]:
    """``{"fn": "mule_msg", "msg": M, "target": T, "block": b, "repeat": n}`` or
    ``{"fn": "farm_msg", "farm": T, "msg": M, "repeat": n}``; M is ``{"str": s}``,
    ``{"bytes": s}`` (latin-1) or ``{"size": n}``, ``{i}`` is replaced by the repeat index;
    T is ``{"int": n}``, ``{"str": s}`` or ``{"bytes": s}``, absent for no target."""
    values: list[dict[str, Any]] = []
    for i in range(op.get("repeat", 1)):
        message = message_of(op["msg"], i)
        try:
            if op["fn"] == "farm_msg":
                value = uwsgi.farm_msg(target_of(op["farm"]), message)
            elif "target" not in op:
                value = uwsgi.mule_msg(message, block=op.get("block", False))
            else:
                target = target_of(op["target"])
                value = uwsgi.mule_msg(message, target, block=op.get("block", False))
        except Exception as exc:
            values.append({"error": type(exc).__name__, "message": str(exc)})
        else:
            values.append(outcome(value))
    return values[0] if op.get("repeat", 1) == 1 else {"all": values}


def burst(query: dict[str, list[str]]) -> dict[str, Any]:
    n = int(query.get("n", ["100000"])[0])
    size = int(query.get("size", ["100"])[0])
    target = int(query.get("target", ["1"])[0])
    block = query.get("block", ["0"])[0] == "1"
    padding = b"." * (size - 10)
    accepted = rejected = 0
    started = time.monotonic()
    for seq in range(n):
        payload = b"%010d" % seq + padding
        if uwsgi.mule_msg(payload, target, block=block):
            accepted += 1
        else:
            rejected += 1
    elapsed = time.monotonic() - started
    return {"sent": n, "accepted": accepted, "rejected": rejected, "elapsed": elapsed}


def application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    payload: Any
    if path == "/ids":
        payload = {
            "worker": uwsgi.worker_id(),
            "mule": uwsgi.mule_id(),
            "pid": os.getpid(),
            "in_farm_alpha": uwsgi.in_farm("alpha"),
            "in_farm": uwsgi.in_farm(),
        }
    elif path == "/ops":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        payload = [run_op(op) for op in json.loads(body)]
    elif path == "/burst":
        payload = burst(query)
    elif path == "/signal":
        uwsgi.signal(int(query["num"][0]))
        payload = {"raised": int(query["num"][0])}
    elif path == "/mulefunc":
        assert mule_decorated is not None, "start the server with DECORATED=1"
        func = {
            "any": mule_decorated.anywhere,
            "two": mule_decorated.on_two,
            "grp": mule_decorated.in_grp,
        }[query["kind"][0]]
        payload = {"returned": repr(func(query["tag"][0]))}
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    body = json.dumps(payload).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
