"""A programmed mule (``--mule=waiter.py``) that blocks in ``uwsgi.signal_wait()``.

First it waits for any signal, then only for signal 52; after each return it records
``uwsgi.signal_received()`` and what ``signal_wait`` returned.
"""

import uwsgi
from marks import mark

mark("waiter-ready")
while True:
    result = uwsgi.signal_wait()
    mark("wait-any", uwsgi.signal_received(), result=repr(result))
    result = uwsgi.signal_wait(52)
    mark("wait-52", uwsgi.signal_received(), result=repr(result))
