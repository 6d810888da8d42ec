"""Shared by the signal test apps: append one JSON line per event to a file.

The file is named by an environment variable the test sets (``OUT`` unless told
otherwise). Each line records which process did what: the signal number, uwsgi's mule
and worker ids, the pid and the time. One ``os.write`` on an ``O_APPEND`` descriptor per
line keeps lines from different processes whole.
"""

import json
import os
import time

import uwsgi


def mark(event, signum=None, env="OUT", **extra):
    record = {
        "event": event,
        "signum": signum,
        "mule": uwsgi.mule_id(),
        "worker": uwsgi.worker_id(),
        "pid": os.getpid(),
        "t": time.time(),
    }
    record.update(extra)
    fd = os.open(os.environ[env], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def handler(event):
    """A signal handler that only records that it ran (and where)."""

    def run(signum):
        mark(event, signum)

    run.__name__ = f"mark_{event}"
    return run
