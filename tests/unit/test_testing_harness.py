"""muleteer.testing: code written for uWSGI, unit-tested in-process, with no server."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import pytest

from muleteer import testing
from muleteer.triggers import Cron

APPS = str(Path(__file__).resolve().parents[1] / "apps" / "harness")


@pytest.fixture
def env(uwsgi_env: Any, monkeypatch: pytest.MonkeyPatch) -> testing.Harness:
    monkeypatch.syspath_prepend(APPS)
    return uwsgi_env(workers=2, mules=2)


def test_import_uwsgi_is_an_import_error_without_the_harness() -> None:
    assert "uwsgi" not in sys.modules
    with pytest.raises(ImportError):
        import uwsgi  # noqa: F401


def test_seed_decorators_run_in_the_right_virtual_processes(env: testing.Harness) -> None:
    tasks = env.load("seed_tasks")
    import uwsgi

    env.advance(30)
    assert tasks.RECORDS == [("timer", 0, "mule", 1)]
    env.advance(30)
    assert tasks.RECORDS[-1] == ("timer", 0, "mule", 2)  # "mule" = any mule: they take turns
    uwsgi.signal(17)
    assert tasks.RECORDS[-1] == ("signal17", 17, "mule", 2)
    env.touch(tasks.WATCHED + "/new-file")
    assert tasks.RECORDS[-2:] == [("filemon", 1, "mule", 1), ("filemon", 1, "mule", 2)]
    assert env.handled_by(17) == ["mule 2"]
    assert [r.origin for r in env.raised if r.num == 17] == ["master"]


def test_mulefunc_round_trip(env: testing.Harness) -> None:
    tasks = env.load("seed_tasks")
    with env.worker(1):
        assert tasks.offload("job-1") is None  # a call sends; it does not run here
        tasks.offload_to_two("job-2")
    assert ("mulefunc", "job-1", "mule", 1) in tasks.RECORDS
    assert ("mulefunc2", "job-2", "mule", 2) in tasks.RECORDS
    assert env.pending_messages(2) == 0


def test_ids_answer_per_virtual_process(env: testing.Harness) -> None:
    import uwsgi

    assert (uwsgi.worker_id(), uwsgi.mule_id()) == (0, 0)  # the master
    with env.worker(2):
        assert (uwsgi.worker_id(), uwsgi.mule_id()) == (2, 0)
    with env.mule(1):
        assert (uwsgi.worker_id(), uwsgi.mule_id()) == (0, 1)
    with pytest.raises(SystemError):
        uwsgi.signal_wait()  # in the master: raises at once (DESIGN deviation 7)


def test_messages_to_a_programmed_mule_wait_for_mule_get_msg(uwsgi_env: Any) -> None:
    env = uwsgi_env(workers=1, options=["--mule=job.py", "--mule"])
    import uwsgi

    with env.worker(1):
        assert uwsgi.mule_msg(b"for-one", 1) is True
    assert env.pending_messages(1) == 1
    with env.mule(1):
        assert uwsgi.mule_get_msg(timeout=0) == b"for-one"
        assert uwsgi.mule_get_msg(timeout=0) == b""  # uWSGI's "timeout" value
    with pytest.raises(ValueError, match="invalid mule number"):
        uwsgi.mule_msg(b"x", 3)


def test_crons_over_a_simulated_week_match_the_rules(env: testing.Harness) -> None:
    tasks = env.load("seed_tasks")
    start = env.clock.now()
    env.advance(7 * 24 * 3600)
    nightly = [r for r in env.raised if r.num == 2]
    sunday = [r for r in env.raised if r.num == 3]
    # Independent expectation: walk the week minute by minute with the cron rules.
    expected = {2: [], 3: []}
    rules = {2: Cron(2, 30, 3, -1, -1, -1), 3: Cron(3, 0, -1, -1, -1, 0)}
    minute = start.replace(second=0, microsecond=0)
    while minute <= start + datetime.timedelta(days=7):
        for num, rule in rules.items():
            if minute > start and rule.matches(minute.timetuple()):
                expected[num].append(minute.timestamp())
        minute += datetime.timedelta(minutes=1)
    assert [r.at for r in nightly] == expected[2]
    assert len(nightly) == 7  # 03:30 every day
    assert [r.at for r in sunday] == expected[3]
    assert len(sunday) == 24  # every hour of the one Sunday
    assert [r for r in tasks.RECORDS if r[0] == "sunday"][:2] == [
        ("sunday", 3, "worker", 1),
        ("sunday", 3, "worker", 2),
    ]


def test_set_jumps_the_clock_and_checks_crons(env: testing.Harness) -> None:
    tasks = env.load("seed_tasks")
    env.set(datetime.datetime(2026, 3, 4, 3, 30, 10))
    assert tasks.RECORDS == [("cron", 2, "mule", 1)]


def test_handler_exceptions_are_recorded_not_raised(env: testing.Harness) -> None:
    import uwsgi

    def broken(signum: int) -> None:
        raise RuntimeError("boom")

    uwsgi.register_signal(40, "worker2", broken)
    uwsgi.signal(40)
    assert env.handled[-1] == testing.Handled(40, "worker 2", False, env.clock.wall)


def test_uninstall_restores_sys_modules(uwsgi_env: Any) -> None:
    env = uwsgi_env()
    assert sys.modules["uwsgi"] is env.module
    env.uninstall()
    assert "uwsgi" not in sys.modules and "uwsgidecorators" not in sys.modules
