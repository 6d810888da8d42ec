"""Privilege-drop probe (suite F3): reports, from inside a worker, the process's ids, its
parent-death signal and whether ``os.setuid(0)`` still works.

It imports only modules the muleteer master has already imported before it drops
privileges (os, ctypes, json, time): after ``--uid nobody`` the interpreter's own files may not
be readable (on the CI machine Python lives under /root, mode 0700), and this probe must
test muleteer, not the app's imports.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

PR_GET_PDEATHSIG = 2


def pdeathsig() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(-1)
    if libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0) != 0:
        return -ctypes.get_errno()
    return value.value


def proc_status() -> dict[str, str]:
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("Uid", "Gid", "Groups"):
                out[name] = value.strip()
    return out


def try_setuid0() -> str:
    try:
        os.setuid(0)
    except PermissionError as exc:
        return f"PermissionError: {exc}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "succeeded"


def report() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "status": proc_status(),
        "pdeathsig": pdeathsig(),
        "setuid0": try_setuid0(),
    }


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = environ.get("QUERY_STRING", "")
    if query.startswith("hold="):  # keep this worker busy: the next request goes to another
        time.sleep(min(float(query[5:]), 2.0))
    body = json.dumps(report()).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Pid", str(os.getpid()))])
    return [body]
