"""The in-process harness and the real server agree: same handlers in the same ids, and
the same cron firings (the real server's next due times vs the harness's simulated ones)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from helpers import poll_file
from muleteer.top import fetch

pytestmark = pytest.mark.integration

APP_DIR = Path(__file__).resolve().parents[1] / "apps" / "harness"
OPTIONS = ["--processes", "2", "--mules", "3", "--farm", "jobs:1,2"]
SIGNALS = [20, 21, 22, 23, 24, 25]
# Where each signal may run: a set of (worker id, mule id); "any" targets may pick any
# member, so for them the check is membership and the count.
ALLOWED = {
    20: {(0, 2)},
    21: {(1, 0), (2, 0)},
    22: {(1, 0)},
    23: {(0, 1), (0, 2), (0, 3)},
    24: {(0, 1), (0, 2)},
    25: {(0, 1), (0, 2), (0, 3)},
}
CRON_NAMES = {"nightly", "five"}
COUNTS = {20: 1, 21: 2, 22: 1, 23: 3, 24: 1, 25: 1}


def by_signal(records: list[list[Any]]) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for _name, num, worker, mule in records:
        out.setdefault(num, []).append((worker, mule))
    return out


def check(records: list[list[Any]]) -> dict[int, list[tuple[int, int]]]:
    got = by_signal(records)
    for num in SIGNALS:
        assert len(got.get(num, [])) == COUNTS[num], (num, got.get(num))
        assert set(got[num]) <= ALLOWED[num], (num, got[num])
    return got


def signal_records(text: str) -> list[list[Any]]:
    """The records of SIGNALS; the "five" cron may fire in the real server meanwhile."""
    records = [json.loads(line) for line in text.splitlines()]
    return [r for r in records if r[0] not in CRON_NAMES]


def test_real_server_and_harness_route_alike(
    muleteer_server: Any, uwsgi_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "records"
    stats = tmp_path / "stats.sock"
    server = muleteer_server(
        *OPTIONS,
        "--pythonpath",
        str(APP_DIR),
        "--stats",
        str(stats),
        app=str(APP_DIR / "agree_app.py"),
        env={"OUT": str(out)},
    )
    expected_lines = 0
    for num in SIGNALS:
        assert server.get(f"/?{num}").status == 200
        expected_lines += COUNTS[num]
        poll_file(out, lambda text, n=expected_lines: len(signal_records(text)) == n)
    real = check(signal_records(out.read_text()))
    while True:  # read the next due times within one minute, so both start from it
        now = datetime.datetime.now().replace(microsecond=0)
        crons = {c["signum"]: c["next_due"] for c in fetch(str(stats))["crons"]}
        if datetime.datetime.now().minute == now.minute:
            break

    monkeypatch.syspath_prepend(str(APP_DIR))
    env = uwsgi_env(workers=2, mules=3, farms={"jobs": (1, 2)}, start=now)
    app = env.load("agree_app")
    import uwsgi

    for num in SIGNALS:
        uwsgi.signal(num)
    simulated = check(app.RECORDS)
    # Deterministic targets agree exactly; "any" targets agree on who may take them.
    for num in (20, 21, 22, 23):
        assert sorted(real[num]) == sorted(simulated[num]), num

    # Crons: the first firing the harness simulates is the real server's next due time.
    env.advance(24 * 3600)
    first = {}
    for raised in env.raised:
        if raised.origin == "cron":
            first.setdefault(raised.num, raised.at)
    nightly, five = (num for num, _ in sorted(crons.items()))
    assert first[nightly] == pytest.approx(crons[nightly], abs=1)
    assert first[five] == pytest.approx(crons[five], abs=1)
