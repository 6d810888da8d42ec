"""Signals with every kind of target, registered in the master; handlers record where
they ran (``marks.mark``). The web side (``webraise``) raises them from requests."""

import os
import time

import uwsgi
from marks import handler, mark
from webraise import application  # noqa: F401

TARGETS = {
    20: "workers",
    21: "mules",
    22: "worker2",
    23: "mule1",
    24: "active-workers",
    25: "worker",
    26: "mule",
    27: "mule2",
    28: "mules",  # sentinel after a broadcast to mules
    29: "workers",  # sentinel after a broadcast to workers
    60: "mule1",  # the burst
    61: "mule1",  # sentinel after the burst
}
for _num, _target in TARGETS.items():
    uwsgi.register_signal(_num, _target, handler(f"sig{_num}"))


def relay(signum):
    """Runs in mule 1 and raises signals that workers handle."""
    mark("relay", signum)
    for num in (32, 22, 25):
        uwsgi.signal(num)


uwsgi.register_signal(31, "mule1", relay)
uwsgi.register_signal(32, "workers", handler("sig32"))


def gate(signum):
    """Keeps mule 1 busy until the file named by GATE exists (at most 20 s)."""
    mark("gate-entered", signum)
    deadline = time.monotonic() + 20
    while not os.path.exists(os.environ["GATE"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    mark("gate-left", signum)


uwsgi.register_signal(62, "mule1", gate)


def explode(signum):
    mark("explode", signum)
    raise ValueError(f"boom from the handler of signal {signum}")


uwsgi.register_signal(70, "mule1", explode)
uwsgi.register_signal(71, "worker1", explode)


def locked_increments(signum):
    """Every worker adds 200 to the counter file, one read-modify-write at a time."""
    mark("lock-arrived", signum)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # barrier: both workers are here, so they overlap
        with open(os.environ["OUT"]) as handle:
            if handle.read().count('"lock-arrived"') >= uwsgi.numproc:
                break
        time.sleep(0.002)
    path = os.environ["COUNTER"]
    for _ in range(200):
        uwsgi.lock()
        try:
            with open(path) as handle:
                value = int(handle.read())
            time.sleep(0.0005)  # widen the window a missing lock would lose updates in
            with open(path, "w") as handle:
                handle.write(str(value + 1))
        finally:
            uwsgi.unlock()
    mark("lock-done", signum)


uwsgi.register_signal(80, "workers", locked_increments)
