"""An app that imports a timed-jobs module ending in the seed's ``signal_wait`` loop."""

import time

from marks import mark

started = time.monotonic()
import tasks_master  # noqa: E402, F401

mark("imported", elapsed=time.monotonic() - started)

from webraise import application  # noqa: E402, F401
