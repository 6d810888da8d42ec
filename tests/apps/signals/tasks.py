"""The seed article's summary pattern, as a mule program: ``--mule=tasks.py``.

Timed jobs are declared at the top with the decorators; the module ends with the
article's loop on ``uwsgi.signal_wait()``, which is where the mule runs their handlers.
"""

import sys

from marks import mark
from uwsgidecorators import timer


def _inside_signal_wait():
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "signal_wait":
            return True
        frame = frame.f_back
    return False


@timer(1, target="mule")
def every_second(signum):
    mark("tasks-timer", signum, in_signal_wait=_inside_signal_wait())


## at the end of the timed-jobs module: under uWSGI, block the mule here
try:
    import uwsgi

    while True:
        sig = uwsgi.signal_wait()
        print(sig)
except Exception as err:  # noqa: F841 - the article's code
    pass
