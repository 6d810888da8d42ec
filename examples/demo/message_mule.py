"""Mule 3: a programmed mule (`mule = message_mule.py`): it runs as __main__ and loops on
uwsgi.mule_get_msg(), like the seed article's example, with a daemon thread beside it."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import uwsgi
from activity import record


def heartbeat():
    while True:
        time.sleep(30)
        record(f"mule {uwsgi.mule_id()}", "programmed mule thread: still alive")


def main():
    threading.Thread(target=heartbeat, daemon=True).start()
    record(f"mule {uwsgi.mule_id()}", "programmed mule started, waiting for messages")
    while True:
        message = uwsgi.mule_get_msg()
        record(f"mule {uwsgi.mule_id()}", f"received message {message.decode()!r}")


if __name__ == "__main__":
    main()
