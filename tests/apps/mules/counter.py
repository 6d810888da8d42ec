"""A programmed mule that counts distinct sequence numbers of burst messages.

Burst messages start with a 10-digit sequence number. Control messages:
``CTRL:phase:NAME:DELAY`` starts a phase (sleep DELAY seconds per burst message),
``CTRL:report`` records what the phase received.
"""

import time

import uwsgi
from marks import record

record("start", program="counter.py")

if __name__ == "__main__":
    phase, delay, received, seen = "", 0.0, 0, set()
    while True:
        message = uwsgi.mule_get_msg()
        if message.startswith(b"CTRL:"):
            parts = message.decode().split(":")
            if parts[1] == "phase":
                phase, delay, received, seen = parts[2], float(parts[3]), 0, set()
            elif parts[1] == "report":
                record(
                    "report",
                    phase=phase,
                    received=received,
                    distinct=len(seen),
                    low=min(seen, default=-1),
                    high=max(seen, default=-1),
                )
            continue
        received += 1
        seen.add(int(message[:10]))
        if delay:
            time.sleep(delay)
