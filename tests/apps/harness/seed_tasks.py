"""The seed article's decorator examples, in Python 3 form, recording where they run."""

import uwsgi
from uwsgidecorators import cron, filemon, mulefunc, signal, timer

RECORDS = []
WATCHED = "/tmp/muleteer-harness-watched"


def where():
    return ("mule", uwsgi.mule_id()) if uwsgi.mule_id() else ("worker", uwsgi.worker_id())


@timer(30, target="mule")
def hello(signum):
    RECORDS.append(("timer", signum, *where()))


@signal(17, target="mule2")
def i_am_mule2(signum):
    RECORDS.append(("signal17", signum, *where()))


@filemon(WATCHED, target="mules")
def tmp_modified(signum):
    RECORDS.append(("filemon", signum, *where()))


@cron(30, 3, -1, -1, -1, target="mule1")
def nightly(signum):
    RECORDS.append(("cron", signum, *where()))


@cron(0, -1, -1, -1, 0, target="workers")
def sundays_hourly(signum):
    RECORDS.append(("sunday", signum, *where()))


@mulefunc
def offload(job):
    RECORDS.append(("mulefunc", job, *where()))


@mulefunc(2)
def offload_to_two(job):
    RECORDS.append(("mulefunc2", job, *where()))
