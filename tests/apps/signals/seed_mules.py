"""The seed article's signal-only mule examples, in Python 3 form.

The three decorated functions are the article's (a 1 s timer instead of 30 s so a test
can watch it repeat); each also records where it ran. Raising signal 17 is a web request.
"""

# ruff: noqa: UP031 - the article's own %-formatting, kept as written

import os

import uwsgi
from marks import mark
from uwsgidecorators import filemon, signal, timer


# run a timer in the first available mule
@timer(1, target="mule")
def hello(signum):
    print("Hi! I am responding to signal %d, running on mule %d" % (signum, uwsgi.mule_id()))
    mark("timer", signum)


# map signal 17 to mule 2
@signal(17, target="mule2")
def i_am_mule2(signum):
    print("Greetings! I am running in mule number two.")
    mark("sig17", signum)


# monitor a directory and run the handler in every mule
@filemon(os.environ["WATCH"], target="mules")
def tmp_modified(signum):
    print("%s has been modified. I am mule %d!" % (os.environ["WATCH"], uwsgi.mule_id()))
    mark("filemon", signum)


def application(environ, start_response):
    if environ["PATH_INFO"] == "/raise17":
        uwsgi.signal(17)
    body = b"worker %d\n" % uwsgi.worker_id()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
