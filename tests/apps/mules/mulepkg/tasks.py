"""``--mule=mulepkg.tasks:run``: the function is called with no arguments."""

import uwsgi
from marks import describe, record


def run(*args: object, **kwargs: object) -> None:
    record("start", program="mulepkg.tasks:run", nargs=len(args), nkwargs=len(kwargs))
    while True:
        record("msg", via="mule_get_msg", **describe(uwsgi.mule_get_msg()))
