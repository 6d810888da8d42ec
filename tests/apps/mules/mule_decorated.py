"""uwsgidecorators in the app (imported in the master before fork, so every mule has it).

Signal 17 (target mule1) records where it ran; signal 18 (target mule1) sleeps 5 s (for
``--mule-harakiri``); three ``@mulefunc`` functions: any mule, mule 2, farm ``grp``.
"""

import time

from marks import record
from uwsgidecorators import mulefunc, signal


@signal(17, target="mule1")
def on_17(num: int) -> None:
    record("signal", num=num)


@signal(18, target="mule1")
def on_18_sleeps(num: int) -> None:
    record("signal-start", num=num)
    time.sleep(5)
    record("signal-end", num=num)  # must never happen with --mule-harakiri=1


@mulefunc
def anywhere(tag: str) -> None:
    record("mulefunc", kind="any", tag=tag)


@mulefunc(2)
def on_two(tag: str) -> None:
    record("mulefunc", kind="two", tag=tag)


@mulefunc("grp")
def in_grp(tag: str) -> None:
    record("mulefunc", kind="grp", tag=tag)
