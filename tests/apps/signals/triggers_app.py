"""Handlers for signals raised by the master's own sources: a signal cron declared with
``@cron``, and the ``--timer``, ``--rbtimer`` and ``--touch-signal`` options."""

from marks import mark
from uwsgidecorators import cron, signal
from webraise import application  # noqa: F401


@cron(-1, -1, -1, -1, -1, target="mule")
def every_minute(signum):
    mark("cron", signum)


@signal(18, target="mule")
def on_timer(signum):
    mark("timer18", signum)


@signal(20, target="mule")
def on_rbtimer(signum):
    mark("rbtimer20", signum)


@signal(19, target="mule")
def on_touch(signum):
    mark("touch19", signum)
