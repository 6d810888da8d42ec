"""The demo web app: a page that shows what every mule did, and buttons to make them work.

Everything here is plain uWSGI API: it runs the same under uWSGI (with uwsgidecorators
installed) and under muleteer.
"""

import html
import os
import sys
import time
from urllib.parse import parse_qs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import uwsgi
from activity import LOG, WATCHED, recent, record
from uwsgidecorators import cron, filemon, signal, timer


def me():
    if uwsgi.mule_id():
        return f"mule {uwsgi.mule_id()}"
    if uwsgi.worker_id():
        return f"worker {uwsgi.worker_id()}"
    return "master"


@timer(10, target="mule")
def every_ten_seconds(signum):
    record(me(), f"timer: signal {signum} fired (every 10 s, any mule)")


@cron(-1, -1, -1, -1, -1, target="mule1")
def every_minute(signum):
    record(me(), f"cron: signal {signum}, the start of a minute")


@signal(17, target="mule2")
def on_seventeen(signum):
    record(me(), "signal 17 raised from the web page, handled here in mule 2")


@filemon(WATCHED, target="mules")
def on_watched_change(signum):
    names = sorted(os.listdir(WATCHED))[-3:]
    record(me(), f"file monitor: {WATCHED} changed (latest: {', '.join(names)})")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>muleteer demo</title>
<meta http-equiv="refresh" content="5">
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td{{padding:.2em .6em;border-bottom:1px solid #ddd}} form{{display:inline}}</style></head>
<body><h1>muleteer demo</h1>
<p>Served by {who} (pid {pid}). Mules: {mules}. This page refreshes every 5 s.</p>
<form method="post" action="/message"><input name="text" value="hello mule 3">
<button>send to the programmed mule (mule 3)</button></form>
<form method="post" action="/signal"><button>raise signal 17 (mule 2)</button></form>
<form method="post" action="/touch"><button>touch a file in var/watched (all mules)</button>
</form>
<h2>What the mules did</h2><table>{rows}</table>
<p>Activity log: {log}</p></body></html>"""


def application(environ, start_response):
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        form = parse_qs(environ["wsgi.input"].read(length).decode())
        if path == "/message":
            text = form.get("text", ["hello"])[0]
            ok = uwsgi.mule_msg(text.encode(), 3)
            record(me(), f"sent {text!r} to mule 3 (queued: {ok})")
        elif path == "/signal":
            uwsgi.signal(17)
            record(me(), "raised signal 17")
        elif path == "/touch":
            name = os.path.join(WATCHED, f"touched-{int(time.time() * 1000)}")
            with open(name, "w") as handle:
                handle.write("touched\n")
            record(me(), f"created {os.path.basename(name)}")
        start_response("303 See Other", [("Location", "/"), ("Content-Length", "0")])
        return [b""]
    if path != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            time.strftime("%H:%M:%S", time.localtime(e["t"])),
            html.escape(e["who"]),
            html.escape(e["what"]),
        )
        for e in recent()
    )
    body = PAGE.format(
        who=me(),
        pid=os.getpid(),
        mules=len(uwsgi.opt.get("mule", [])),
        rows=rows or "<tr><td>nothing yet</td></tr>",
        log=html.escape(LOG),
    )
    data = body.encode()
    start_response(
        "200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]
