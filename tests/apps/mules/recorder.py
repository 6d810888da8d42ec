"""A programmed mule (``--mule=recorder.py``): records its start and every message.

Environment: ``READER_<mule id>=farm`` reads with ``uwsgi.farm_get_msg()`` instead of
``uwsgi.mule_get_msg()``; ``FARMS=a,b`` records ``uwsgi.in_farm(name)`` at start; ``GATE``
names a file that must exist before the mule reads anything. A message ``exit:HOW``
ends the program: ``return``, ``raise``, ``sysexit`` (status 3) or ``osexit`` (status 3).
"""

import os
import sys
import time

import uwsgi
from marks import describe, record

FARMS = [name for name in os.environ.get("FARMS", "").split(",") if name]

record(
    "start",
    name=__name__,
    program="recorder.py",
    farms={name: uwsgi.in_farm(name) for name in FARMS},
    any_farm=uwsgi.in_farm(),
)


def serve() -> None:
    gate = os.environ.get("GATE")
    while gate and not os.path.exists(gate):
        time.sleep(0.01)
    farm_reader = os.environ.get(f"READER_{uwsgi.mule_id()}") == "farm"
    while True:
        message = uwsgi.farm_get_msg() if farm_reader else uwsgi.mule_get_msg()
        if isinstance(message, bytes) and message.startswith(b"exit:"):
            how = message[5:].decode()
            record("exiting", how=how)
            if how == "return":
                return
            if how == "raise":
                raise RuntimeError("recorder was asked to raise")
            if how == "sysexit":
                sys.exit(3)
            if how == "osexit":
                os._exit(3)
        record("msg", via="farm_get_msg" if farm_reader else "mule_get_msg", **describe(message))


if __name__ == "__main__":
    record("main")
    serve()
