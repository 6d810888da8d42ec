"""Loaded in every worker after fork (``--lazy-apps``): its registration is a late one."""

from marks import mark
from uwsgidecorators import signal
from webraise import application  # noqa: F401


@signal(41, target="workers")
def on_41(signum):
    mark("sig41", signum)
