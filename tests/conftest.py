"""Test-suite set-up: make the helpers in tests/ importable, and let servers run as root.

CI runs as root; muleteer refuses to run as root without a uid unless asked, so every
server the tests start is asked through the environment (MULETEER_ALLOW_ROOT is the
`allow-root` option). The tests of that refusal remove it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

if os.geteuid() == 0:
    os.environ.setdefault("MULETEER_ALLOW_ROOT", "1")


import pytest  # noqa: E402

import figures  # noqa: E402


@pytest.fixture
def record_figure(request: pytest.FixtureRequest):
    """``record_figure(suite, what, value, anchor="", anchor_value="")``: a measured figure
    for the end-of-run table (see tests/figures.py)."""

    def record(
        suite: str, what: str, value: object, anchor: str = "", anchor_value: object = ""
    ) -> None:
        figures.record(suite, what, value, anchor, anchor_value, request.node.nodeid)

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not figures.FIGURES:
        return
    path = figures.dump(Path(str(config.rootpath)))
    terminalreporter.write_sep("=", "muleteer figures")
    terminalreporter.write_line(figures.table())
    terminalreporter.write_line(f"(also in {path})")
