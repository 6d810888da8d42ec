"""Shared by the mule test apps: append one JSON line per event to the file $OUT.

Every line carries the process's pid, ``uwsgi.mule_id()`` and ``uwsgi.worker_id()``, so
a test can tell which process did what. One ``os.write`` per line on an ``O_APPEND``
descriptor keeps lines from different processes whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

import uwsgi


def record(event: str, **fields: Any) -> None:
    fields.update(
        event=event,
        pid=os.getpid(),
        mule=uwsgi.mule_id(),
        worker=uwsgi.worker_id(),
        thread=threading.current_thread().name,
        time=time.time(),
    )
    line = (json.dumps(fields) + "\n").encode()
    fd = os.open(os.environ["OUT"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def describe(message: Any) -> dict[str, Any]:
    """What a received message looked like: type, length, digest, text (when short)."""
    fields: dict[str, Any] = {"type": type(message).__name__}
    if isinstance(message, bytes):
        fields["len"] = len(message)
        fields["sha"] = hashlib.sha256(message).hexdigest()
        if len(message) <= 4096:
            fields["msg"] = message.decode("latin-1")
    else:
        fields["repr"] = repr(message)
    return fields
