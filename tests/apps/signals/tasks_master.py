"""The seed article's summary pattern in a module that the app imports (in the master).

``uwsgi.signal_wait()`` raises at once in the master, the article's ``except`` swallows
it and the import carries on; the signal-only mules run the timer.
"""

from marks import mark
from uwsgidecorators import timer


@timer(1, target="mule")
def every_second(signum):
    mark("tasks-timer", signum)


## at the end of the timed-jobs module: under uWSGI, block the mule here
try:
    import uwsgi

    while True:
        sig = uwsgi.signal_wait()
        print(sig)
except Exception as err:  # noqa: F841 - the article's code
    pass
