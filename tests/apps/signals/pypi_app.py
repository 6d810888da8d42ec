"""The PyPI ``uwsgidecorators`` (unchanged) on top of muleteer's ``uwsgi`` module.

``/offload?v=X`` calls a ``@mulefunc``; ``/raise?n=90`` raises the ``@signal``;
``/module`` tells which ``uwsgidecorators`` file was imported.
"""

import json
import os

import uwsgi
import uwsgidecorators
from marks import mark
from uwsgidecorators import filemon, mulefunc, signal, timer
from webraise import application as raise_app


@timer(1, target="mule1")
def tick(signum):
    mark("pypi-timer", signum)


@signal(90, target="mule2")
def ninety(signum):
    mark("pypi-sig90", signum)


@filemon(os.environ["WATCH"], target="mules")
def changed(signum):
    mark("pypi-filemon", signum)


@mulefunc
def offload(value):
    mark("pypi-mulefunc", value=value)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path not in ("/offload", "/module"):
        return raise_app(environ, start_response)
    if path == "/offload":
        offload(environ["QUERY_STRING"].partition("v=")[2])
        payload = {"sent": True}
    else:
        payload = {
            "file": uwsgidecorators.__file__,
            "hook_is_dispatcher": uwsgi.mule_msg_hook is uwsgidecorators.mule_msg_dispatcher,
        }
    body = json.dumps(payload).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
