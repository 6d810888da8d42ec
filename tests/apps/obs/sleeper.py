"""A programmed mule that never reads its queue (so the queue fills up)."""

import time

while True:
    time.sleep(3600)
