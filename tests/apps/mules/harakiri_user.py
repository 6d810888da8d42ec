"""A programmed mule that arms ``uwsgi.set_user_harakiri(1)`` and then sleeps."""

import time

import uwsgi
from marks import record

record("start", program="harakiri_user.py")

if __name__ == "__main__":
    while True:
        if uwsgi.mule_get_msg() == b"go":
            uwsgi.set_user_harakiri(1)
            record("armed")
            time.sleep(10)
            record("woke")  # must never happen: harakiri kills the mule first
