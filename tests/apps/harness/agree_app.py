"""Handlers on every kind of target; each records (name, signum, worker id, mule id).

Used both under the real server (records go to the file named by $OUT) and under
muleteer.testing (records stay in RECORDS), to show both route the same way.
"""

import json
import os

import uwsgi
from uwsgidecorators import cron, signal

OUT = os.environ.get("OUT")
RECORDS = []


def rec(name, signum):
    item = [name, signum, uwsgi.worker_id(), uwsgi.mule_id()]
    RECORDS.append(item)
    if OUT:
        with open(OUT, "a") as handle:
            handle.write(json.dumps(item) + "\n")


@signal(20, target="mule2")
def to_mule2(signum):
    rec("mule2", signum)


@signal(21, target="workers")
def to_workers(signum):
    rec("workers", signum)


@signal(22, target="worker1")
def to_worker1(signum):
    rec("worker1", signum)


@signal(23, target="mules")
def to_mules(signum):
    rec("mules", signum)


@signal(24, target="farm_jobs")
def to_farm(signum):
    rec("farm", signum)


@signal(25, target="mule")
def to_any_mule(signum):
    rec("any-mule", signum)


@cron(30, 3, -1, -1, -1, target="mule1")
def nightly(signum):
    rec("nightly", signum)


@cron(-5, -1, -1, -1, -1, target="mule3")
def every_five_minutes(signum):
    rec("five", signum)


def application(environ, start_response):
    num = int(environ.get("QUERY_STRING") or 0)
    uwsgi.signal(num)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
