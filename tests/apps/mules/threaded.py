"""Two threads of one programmed mule both block in ``uwsgi.mule_get_msg()``."""

import threading
import time

import uwsgi
from marks import record


def reader() -> None:
    record("ready")
    while True:
        message = uwsgi.mule_get_msg()
        record("msg", msg=message.decode("latin-1"))
        time.sleep(0.001)  # give the other thread a chance to take the next one


if __name__ == "__main__":
    threads = [threading.Thread(target=reader, name=f"reader-{i}") for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
