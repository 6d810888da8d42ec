"""Handlers for the signals the programmed mule 1 (``waiter.py``) waits for.

Registered in the master, so the mule inherits them at fork; each records where it ran.
"""

import uwsgi
from marks import handler
from webraise import application  # noqa: F401

for _num in (50, 51, 52):
    uwsgi.register_signal(_num, "mule1", handler(f"h{_num}"))
