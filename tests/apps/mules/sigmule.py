"""A programmed mule for ``mule_get_msg`` timeouts and its (inverted) ``signals`` flag.

Commands (messages): ``timeout`` calls ``mule_get_msg(timeout=1)``; ``probe`` is just
recorded with whether signal handlers ran so far; ``signals-false`` calls
``mule_get_msg(signals=False)`` in a thread named "caller"; ``signal-wait`` calls
``uwsgi.signal_wait()``.
"""

import threading
import time

import uwsgi
from marks import record

record("start", program="sigmule.py")


def call(name: str, **kwargs: object) -> None:
    started = time.monotonic()
    result = uwsgi.mule_get_msg(**kwargs)
    record(
        "result",
        call=name,
        value=repr(result),
        elapsed=time.monotonic() - started,
        caller=threading.current_thread().name,
    )


if __name__ == "__main__":
    while True:
        command = uwsgi.mule_get_msg()
        record("command", msg=command.decode())
        if command == b"timeout":
            call("timeout", timeout=1)
        elif command == b"signals-false":
            thread = threading.Thread(
                target=call, args=("signals-false",), kwargs={"signals": False}, name="caller"
            )
            thread.start()
            thread.join()
        elif command == b"signal-wait":
            started = time.monotonic()
            result = uwsgi.signal_wait()
            record(
                "result",
                call="signal-wait",
                value=repr(result),
                received=uwsgi.signal_received(),
                elapsed=time.monotonic() - started,
            )
