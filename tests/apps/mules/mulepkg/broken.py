"""Importing this module fails: ``--mule=mulepkg.broken:run`` must log the traceback."""

import muleteer_test_no_such_module_xyz  # noqa: F401


def run() -> None:
    raise AssertionError("never reached")
