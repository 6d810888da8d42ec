"""A tiny shared activity log for the demo: one JSON line per event, in var/activity.log."""

import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VAR = os.path.join(HERE, "var")
LOG = os.path.join(VAR, "activity.log")
WATCHED = os.path.join(VAR, "watched")

os.makedirs(WATCHED, exist_ok=True)


def record(who, what):
    line = json.dumps({"t": time.time(), "who": who, "pid": os.getpid(), "what": what})
    with open(LOG, "a") as handle:
        handle.write(line + "\n")


def recent(limit=40):
    try:
        with open(LOG) as handle:
            lines = handle.readlines()[-limit:]
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in reversed(lines)]
