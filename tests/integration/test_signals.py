"""The uWSGI signal framework end to end, against real muleteer servers.

Handlers in workers and mules append one JSON line per run (signal number, uwsgi's mule
and worker ids, pid, time) to a file the test names with ``OUT`` (see
``tests/apps/signals/marks.py``); web requests raise signals or register handlers late.
Tests poll the file with deadlines: nothing here sleeps a fixed time.

Behaviour of record: ``research/uwsgi-behaviour.md`` sections 4-6, with the deliberate
deviations of ``DESIGN.md`` section 1 (4: late registrations keep their target; 6: a
mule may register handlers; 7: ``signal_wait()`` in the master raises at once).
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from muleteer.pytest_plugin import ServerFactory, ServerProcess, wait_for

pytestmark = pytest.mark.integration

APPS = Path(__file__).resolve().parent.parent / "apps" / "signals"
HELLO = APPS.parent / "hello.py"

Mark = dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------


def read_marks(path: Path) -> list[Mark]:
    """Every complete line of the marks file (a line still being written is skipped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def of(marks: list[Mark], event: str) -> list[Mark]:
    return [m for m in marks if m["event"] == event]


def wait_marks(
    path: Path, predicate: Callable[[list[Mark]], bool], timeout: float = 10.0, what: str = ""
) -> list[Mark]:
    """Poll the marks file until `predicate(marks)` holds; return the marks."""
    found: list[Mark] = []

    def check() -> bool:
        found[:] = read_marks(path)
        return predicate(found)

    try:
        wait_for(check, timeout, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; marks so far:\n" + "\n".join(map(str, found))) from None
    return found


def wait_event(path: Path, event: str, count: int = 1, timeout: float = 10.0) -> list[Mark]:
    marks = wait_marks(
        path, lambda ms: len(of(ms, event)) >= count, timeout, f"{count} x {event!r}"
    )
    return of(marks, event)


def where(marks: list[Mark]) -> Counter[str]:
    """How many marks each process made: {"worker 1": 3, "mule 2": 1, ...}."""
    return Counter(
        f"mule {m['mule']}" if m["mule"] else f"worker {m['worker']}" if m["worker"] else "master"
        for m in marks
    )


def get_json(server: ServerProcess, path: str) -> dict[str, Any]:
    response = server.get(path)
    assert response.status == 200, response.text
    return dict(json.loads(response.body))


def one_pid(server: ServerProcess, role: str) -> int:
    """The pid of the only child titled `role` (waits for a just-forked child's title)."""
    pids: list[int] = wait_for(
        lambda: (found := server.pids(role)) and len(found) == 1 and found, 10, what=role
    )
    return pids[0]


def pids_of(server: ServerProcess, role: str, count: int) -> list[int]:
    """The pids of the `count` children titled `role` ("worker", "mule"), once all have one."""
    pids: list[int] = wait_for(
        lambda: (found := server.pids(role)) and len(found) == count and found,
        10,
        what=f"{count} x {role}",
    )
    return sorted(pids)


def start(
    muleteer_server: ServerFactory,
    tmp_path: Path,
    app: str | Path,
    *options: str,
    env: dict[str, str] | None = None,
) -> tuple[ServerProcess, Path]:
    """A server whose handlers write their marks to a fresh file; returns (server, file)."""
    out = tmp_path / "marks.jsonl"
    server = muleteer_server(
        "--pythonpath",
        str(APPS),
        *options,
        app=app if isinstance(app, Path) else APPS / app,
        env={"OUT": str(out), **(env or {})},
    )
    return server, out


def count_log(server: ServerProcess, pattern: str) -> int:
    regex = re.compile(pattern)
    return sum(1 for line in server.log_text().splitlines() if regex.search(line))


# -- 1. the seed's decorator examples ----------------------------------------------------------


@pytest.fixture
def seed_server(muleteer_server: ServerFactory, tmp_path: Path) -> tuple[ServerProcess, Path, Path]:
    watch = tmp_path / "watched"
    watch.mkdir()
    server, out = start(
        muleteer_server,
        tmp_path,
        "seed_mules.py",
        "--processes",
        "2",
        "--mule",
        "--mule",
        env={"WATCH": str(watch)},
    )
    return server, out, watch


def test_seed_timer_runs_in_a_mule_about_every_second(
    seed_server: tuple[ServerProcess, Path, Path],
) -> None:
    server, out, _ = seed_server
    ticks = wait_event(out, "timer", count=4, timeout=10)
    mule_pids = {one_pid(server, "mule 1"), one_pid(server, "mule 2")}
    assert all(m["mule"] in (1, 2) and m["worker"] == 0 for m in ticks), ticks
    assert {m["pid"] for m in ticks} <= mule_pids
    # A periodic timer: about one tick a second, none skipped, none doubled.
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(ticks)]
    assert all(0.3 < gap < 2.0 for gap in gaps), gaps
    assert 0.8 < (ticks[-1]["t"] - ticks[0]["t"]) / len(gaps) < 1.25, gaps
    # The article's print() lands in the log, from a mule.
    assert re.search(r"Hi! I am responding to signal \d+, running on mule [12]", server.log_text())


def test_seed_signal_17_runs_in_mule_2_only(seed_server: tuple[ServerProcess, Path, Path]) -> None:
    server, out, _ = seed_server
    for _ in range(3):
        assert server.get("/raise17").status == 200
    runs = wait_event(out, "sig17", count=3)
    mule2 = one_pid(server, "mule 2")
    assert [(m["mule"], m["worker"], m["pid"], m["signum"]) for m in runs] == [
        (2, 0, mule2, 17)
    ] * 3
    assert "Greetings! I am running in mule number two." in server.log_text()
    assert "registered (by master, target: mule2)" in server.log_text()


def test_seed_filemon_runs_in_every_mule(seed_server: tuple[ServerProcess, Path, Path]) -> None:
    server, out, watch = seed_server
    (watch / "new-file").write_text("hello\n")
    marks = wait_marks(
        out,
        lambda ms: {m["mule"] for m in of(ms, "filemon")} == {1, 2},
        what="the filemon handler in mules 1 and 2",
    )
    runs = of(marks, "filemon")
    assert all(m["worker"] == 0 for m in runs), runs
    assert {(m["mule"], m["pid"]) for m in runs} == {
        (1, one_pid(server, "mule 1")),
        (2, one_pid(server, "mule 2")),
    }


# -- 2. raised in a worker / raised in a mule ------------------------------------------------


def test_signal_raised_in_a_worker_runs_in_a_mule(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, "targets.py", "--processes", "2", "--mules", "2")
    mule1 = one_pid(server, "mule 1")
    latencies = []
    for i in range(1, 6):
        raised = get_json(server, "/raise?n=23")
        assert raised["worker"] in (1, 2)
        run = wait_event(out, "sig23", count=i)[-1]
        assert (run["mule"], run["worker"], run["pid"]) == (1, 0, mule1)
        latencies.append(run["t"] - raised["raised_at"])
    get_json(server, "/raise?n=279")  # numbers are taken modulo 256: this is 23
    assert wait_event(out, "sig23", count=6)[-1]["pid"] == mule1
    print(f"worker -> mule signal latency: {[round(x * 1000, 2) for x in latencies]} ms")
    assert statistics.median(latencies) < 0.1, latencies


def test_signal_raised_in_a_mule_runs_in_workers(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, "targets.py", "--processes", "2", "--mules", "2")
    workers = {1: one_pid(server, "worker 1"), 2: one_pid(server, "worker 2")}
    get_json(server, "/raise?n=31")  # mule 1's handler raises 32 (workers), 22, 25 (worker)
    marks = wait_marks(
        out,
        lambda ms: len(of(ms, "sig32")) >= 2 and bool(of(ms, "sig22") and of(ms, "sig25")),
        what="32 in both workers, 22 and 25",
    )
    relay = of(marks, "relay")
    assert [(m["mule"], m["pid"]) for m in relay] == [(1, one_pid(server, "mule 1"))]
    for event in ("sig32", "sig22", "sig25"):
        for m in of(marks, event):
            assert m["mule"] == 0 and m["pid"] == workers[m["worker"]], m
    # Nothing else arrives later: a broadcast sentinel follows every byte into each worker.
    get_json(server, "/raise?n=29")
    marks = wait_marks(out, lambda ms: len(of(ms, "sig29")) == 2, what="sentinel 29 x2")
    assert where(of(marks, "sig32")) == {"worker 1": 1, "worker 2": 1}
    assert where(of(marks, "sig22")) == {"worker 2": 1}
    assert len(of(marks, "sig25")) == 1


# -- 3. broadcast and single targets -----------------------------------------------------------


def test_each_target_reaches_exactly_its_processes(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, "targets.py", "--processes", "2", "--mules", "2")
    # 20 workers, 21 mules, 22 worker2, 23 mule1, 24 active-workers, 27 mule2,
    # 25 worker (any one), 26 mule (any one).
    for num in (20, 21, 22, 23, 24, 27, 25, 26):
        get_json(server, f"/raise?n={num}&count=3")
    wait_marks(
        out,
        lambda ms: len(of(ms, "sig25")) >= 3 and len(of(ms, "sig26")) >= 3,
        what="3 x 25 and 3 x 26",
    )
    # Sentinels: a byte for every worker and every mule after all of the above.
    get_json(server, "/raise?n=29")
    get_json(server, "/raise?n=28")
    marks = wait_marks(
        out,
        lambda ms: len(of(ms, "sig29")) == 2 and len(of(ms, "sig28")) == 2,
        what="sentinels 28 and 29 in every process",
    )
    assert where(of(marks, "sig20")) == {"worker 1": 3, "worker 2": 3}
    assert where(of(marks, "sig21")) == {"mule 1": 3, "mule 2": 3}
    assert where(of(marks, "sig22")) == {"worker 2": 3}
    assert where(of(marks, "sig23")) == {"mule 1": 3}
    assert where(of(marks, "sig24")) == {"worker 1": 3, "worker 2": 3}
    assert where(of(marks, "sig27")) == {"mule 2": 3}
    assert sum(where(of(marks, "sig25")).values()) == 3
    assert set(where(of(marks, "sig25"))) <= {"worker 1", "worker 2"}
    assert sum(where(of(marks, "sig26")).values()) == 3
    assert set(where(of(marks, "sig26"))) <= {"mule 1", "mule 2"}
    pids = {
        "worker 1": one_pid(server, "worker 1"),
        "worker 2": one_pid(server, "worker 2"),
        "mule 1": one_pid(server, "mule 1"),
        "mule 2": one_pid(server, "mule 2"),
    }
    for m in marks:
        assert pids[next(iter(where([m])))] == m["pid"], m
    assert "could not deliver" not in server.log_text()


# -- 4. signal_wait in a programmed mule -----------------------------------------------------


def test_signal_wait_in_a_programmed_mule(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    server, out = start(
        muleteer_server,
        tmp_path,
        "waits_app.py",
        "--processes",
        "1",
        f"--mule={APPS / 'waiter.py'}",
        "--mule",
    )
    wait_event(out, "waiter-ready")
    get_json(server, "/raise?n=50")
    wait_event(out, "wait-any")
    get_json(server, "/raise?n=51")  # signal_wait(52) runs 51's handler and keeps waiting
    wait_event(out, "h51")
    get_json(server, "/raise?n=52")
    wait_event(out, "wait-52")
    marks = read_marks(out)
    mule1 = one_pid(server, "mule 1")
    assert [(m["event"], m["signum"]) for m in marks] == [
        ("waiter-ready", None),
        ("h50", 50),
        ("wait-any", 50),
        ("h51", 51),
        ("h52", 52),
        ("wait-52", 52),
    ]
    assert all((m["mule"], m["worker"], m["pid"]) == (1, 0, mule1) for m in marks), marks
    assert [m["result"] for m in marks if m["event"].startswith("wait-")] == ["b''", "b''"]


# -- 5. the seed's summary pattern -----------------------------------------------------------


def test_seed_summary_pattern_as_a_mule_program(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    """DESIGN deviation 6: the decorators at the top of tasks.py register in the mule, and
    the article's signal_wait() loop is where the mule runs the timer's handler."""
    server, out = start(muleteer_server, tmp_path, HELLO, f"--mule={APPS / 'tasks.py'}", "--mule")
    ticks = wait_event(out, "tasks-timer", count=3, timeout=10)
    mule1 = one_pid(server, "mule 1")
    # target='mule' means a mule that has the handler: never the signal-only mule 2.
    assert "error managing signal" not in server.log_text()
    assert all((m["mule"], m["worker"], m["pid"]) == (1, 0, mule1) for m in ticks), ticks
    assert all(m["in_signal_wait"] for m in ticks), ticks
    assert re.search(r"signum \d+ registered \(by mule 1, target: mule\)", server.log_text())
    # print(uwsgi.signal_wait()) after each tick: the article's loop is running.
    server.wait_log(r"^b''$", count=2)
    assert "respawning" not in server.log_text()
    assert "only the master and the workers" not in server.log_text()


def test_seed_summary_pattern_imported_in_the_master(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    """DESIGN deviation 7: signal_wait() raises at once in the master, the article's
    except swallows it, the import carries on and the signal-only mule runs the timer."""
    server, out = start(muleteer_server, tmp_path, "imports_tasks.py", "--mules", "1")
    imported = wait_event(out, "imported")
    assert (imported[0]["pid"], imported[0]["worker"], imported[0]["mule"]) == (server.pid, 0, 0)
    assert imported[0]["elapsed"] < 1.0, imported
    ticks = wait_event(out, "tasks-timer", count=2, timeout=10)
    mule1 = one_pid(server, "mule 1")
    assert all((m["mule"], m["pid"]) == (1, mule1) for m in ticks), ticks
    assert server.get("/").status == 200


# -- 6. late registrations keep their target (DESIGN deviation 4) ------------------------------


def test_registration_in_a_request_is_routed_to_its_target(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, "targets.py", "--processes", "2", "--mules", "2")
    # Target mule1: the master routes 40 to mule 1 (uWSGI would send it to any worker).
    # The handler lives in the registering worker only, so mule 1 has none to run.
    wid = get_json(server, "/register?n=40&target=mule1")["worker"]
    server.wait_log(rf"signum 40 registered \(by worker {wid}, target: mule1\)")
    get_json(server, "/raise?n=40")
    server.wait_log(r"error managing signal 40 on mule 1: no handler registered here")
    assert "error managing signal 40 on worker" not in server.log_text()
    assert not of(read_marks(out), "late40")

    # Target workers, registered in one worker: "the workers that registered it".
    wid = get_json(server, "/register?n=42&target=workers")["worker"]
    server.wait_log(rf"signum 42 registered \(by worker {wid}, target: workers\)")
    for _ in range(3):
        get_json(server, "/raise?n=42")
    wait_event(out, "late42", count=3)
    get_json(server, "/raise?n=29")
    marks = wait_marks(out, lambda ms: len(of(ms, "sig29")) == 2, what="sentinel 29 x2")
    assert where(of(marks, "late42")) == {f"worker {wid}": 3}
    assert "error managing signal 42" not in server.log_text()


def test_lazy_apps_registrations_reach_every_worker(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, "lazy_app.py", "--lazy-apps", "--processes", "2")
    server.wait_log(r"signum 41 registered \(by worker [12], target: workers\)", count=2)
    log = server.log_text()
    assert "signum 41 registered (by worker 1, target: workers)" in log
    assert "signum 41 registered (by worker 2, target: workers)" in log
    get_json(server, "/raise?n=41&count=3")
    marks = wait_event(out, "sig41", count=6)
    assert where(marks) == {"worker 1": 3, "worker 2": 3}
    assert "error managing signal 41" not in server.log_text()


# -- 7. a burst ------------------------------------------------------------------------------


def test_burst_of_2000_signals_to_one_mule_is_handled_2000_times(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, "targets.py", "--processes", "2", "--mules", "1")
    started = time.monotonic()
    get_json(server, "/raise?n=60&count=2000")
    get_json(server, "/raise?n=61")  # same channel, after the burst
    marks = wait_marks(out, lambda ms: bool(of(ms, "sig61")), 30, "the sentinel after the burst")
    elapsed = time.monotonic() - started
    handled = of(marks, "sig60")
    print(f"burst: {len(handled)} of 2000 handled in {elapsed:.2f} s")
    assert len(handled) == 2000
    assert where(handled) == {"mule 1": 2000}
    assert "could not deliver" not in server.log_text()


def test_burst_to_a_busy_mule_is_held_not_dropped(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    """The mule is busy in a handler during the burst, so its channel fills after a few
    hundred bytes (where uWSGI drops the rest): the master must hold and deliver them."""
    gate = tmp_path / "gate"
    server, out = start(
        muleteer_server,
        tmp_path,
        "targets.py",
        "--processes",
        "2",
        "--mules",
        "1",
        env={"GATE": str(gate)},
    )
    get_json(server, "/raise?n=62")
    wait_event(out, "gate-entered")
    get_json(server, "/raise?n=60&count=2000")
    get_json(server, "/raise?n=61")
    assert not of(read_marks(out), "sig60")  # mule 1 is still busy
    gate.write_text("open")
    marks = wait_marks(out, lambda ms: bool(of(ms, "sig61")), 30, "the sentinel after the burst")
    handled = of(marks, "sig60")
    print(f"burst to a busy mule: {len(handled)} of 2000 handled")
    assert len(handled) == 2000
    assert where(handled) == {"mule 1": 2000}
    assert "could not deliver" not in server.log_text()


# -- 8. failures in handlers and unregistered signals ------------------------------------------


def test_handler_exception_is_logged_and_the_process_lives_on(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, "targets.py", "--processes", "2", "--mules", "1")
    mule1 = one_pid(server, "mule 1")
    worker1 = one_pid(server, "worker 1")
    get_json(server, "/raise?n=70")
    get_json(server, "/raise?n=70")
    runs = wait_event(out, "explode", count=2)
    server.wait_log(r"signal 70 handler raised on mule 1", count=2)
    assert "ValueError: boom from the handler of signal 70" in server.log_text()
    get_json(server, "/raise?n=23")
    after = wait_event(out, "sig23")
    assert {m["pid"] for m in runs + after} == {mule1}
    # The same in a worker.
    get_json(server, "/raise?n=71")
    server.wait_log(r"signal 71 handler raised on worker 1")
    assert "ValueError: boom from the handler of signal 71" in server.log_text()
    get_json(server, "/raise?n=20")  # every worker, worker 1 included
    marks = wait_marks(out, lambda ms: len(of(ms, "sig20")) == 2, what="20 in both workers")
    assert [m["pid"] for m in of(marks, "explode") if m["worker"]] == [worker1]
    assert worker1 in {m["pid"] for m in of(marks, "sig20")}
    assert one_pid(server, "mule 1") == mule1 and one_pid(server, "worker 1") == worker1
    assert "DAMN" not in server.log_text() and "respawning" not in server.log_text()


def test_unregistered_signal_is_logged_not_fatal(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, "targets.py", "--processes", "2", "--mules", "1")
    before = pids_of(server, "worker", 2) + pids_of(server, "mule", 1)
    get_json(server, "/raise?n=99")
    server.wait_log(r"error managing signal 99 on worker [12]: no handler registered here")
    get_json(server, "/raise?n=20")
    wait_event(out, "sig20", count=2)
    assert sorted(server.pids("worker")) + server.pids("mule") == before
    assert server.proc is not None and server.proc.poll() is None


# -- 9. crons, option timers, touch-signal -------------------------------------------------------


def test_command_cron_fires_at_start(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    ran = tmp_path / "cron-ran.txt"
    started = time.monotonic()
    server = muleteer_server("--cron", f"-1 -1 -1 -1 -1 /bin/sh -c 'echo ran >> {ran}'", app=HELLO)
    wait_for(lambda: ran.exists() and ran.read_text() == "ran\n", 5, what="the command cron")
    elapsed = time.monotonic() - started
    print(f"command cron first ran {elapsed:.2f} s after the server was started")
    assert elapsed < 2.5
    server.wait_log(r'\[uwsgi-cron\] running "/bin/sh -c')
    server.wait_log(r"\[uwsgi-cron\] command .* exited after \d+ second")


def test_signal_cron_option_timers_and_touch_signal(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    touched = tmp_path / "touch-me"
    touched.write_text("")
    started = time.time()
    server, out = start(
        muleteer_server,
        tmp_path,
        "triggers_app.py",
        "--processes",
        "1",
        "--mules",
        "1",
        "--timer",
        "18 1",
        "--rbtimer",
        "20 1",
        "--touch-signal",
        f"{touched} 19",
    )
    mule1 = one_pid(server, "mule 1")
    cron = wait_event(out, "cron", timeout=5)
    delay = cron[0]["t"] - started
    print(f"@cron handler first ran {delay:.2f} s after the server was started")
    assert delay < 3.0
    marks = wait_marks(
        out,
        lambda ms: len(of(ms, "timer18")) >= 2 and len(of(ms, "rbtimer20")) >= 2,
        what="--timer 18 and --rbtimer 20 twice",
    )
    assert not of(marks, "touch19")  # the file has not been touched yet
    mtime = touched.stat().st_mtime + 5
    os.utime(touched, (mtime, mtime))
    wait_event(out, "touch19", timeout=5)
    marks = read_marks(out)
    for event in ("cron", "timer18", "rbtimer20", "touch19"):
        runs = of(marks, event)
        assert runs and all((m["mule"], m["pid"]) == (1, mule1) for m in runs), (event, runs)
    assert len(of(marks, "touch19")) == 1
    assert len(of(marks, "cron")) == 1  # at most once a minute


# -- 10. touch-reload --------------------------------------------------------------------------


def test_touch_reload_gracefully_reloads(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    touched = tmp_path / "reload-me"
    touched.write_text("")
    server = muleteer_server("--processes", "2", "--touch-reload", str(touched), app=HELLO)
    old = set(pids_of(server, "worker", 2))
    mtime = touched.stat().st_mtime + 5
    os.utime(touched, (mtime, mtime))
    server.wait_log(r"has been touched")
    new = wait_for(
        lambda: (pids := set(server.pids("worker"))) and len(pids) == 2 and not pids & old and pids,
        15,
        what="two new workers",
    )
    assert not new & old
    assert server.proc is not None and server.proc.poll() is None
    wait_for(lambda: server.get("/").status == 200, 10, what="an answer after the reload")
    assert server.get("/").body == b"Hello World!"


# -- 11. the uwsgi module facade ----------------------------------------------------------------


def test_uwsgi_module_values_and_types(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    server, _ = start(
        muleteer_server, tmp_path, "targets.py", "--master", "--processes", "2", "--mule", "--mule"
    )
    info = get_json(server, "/facade")
    opt = info["opt"]
    assert opt["master"] == "True"  # a valueless command-line flag
    assert opt["processes"] == "b'2'"
    assert opt["mule"] == "[True, True]"  # a repeated key is a list
    assert re.fullmatch(r"b'127\.0\.0\.1:\d+'", opt["http-socket"]), opt
    assert info["opt_key_types"] == ["str"]
    assert set(info["opt_value_types"]) <= {"bytes", "bool", "list"}, info["opt_value_types"]
    assert info["version"].startswith("b'2.0"), info["version"]
    assert info["numproc"] == "2"
    assert info["masterpid"] == server.pid
    assert info["registered"] == "True"
    assert info["unregistered"] == "None"
    assert info["workers_type"] == "tuple"
    assert info["workers_entry_types"] == ["dict"]
    assert sorted(info["workers_pids"]) == pids_of(server, "worker", 2)
    statuses = dict(zip(info["workers_pids"], info["workers_status"], strict=True))
    assert statuses[info["pid"]] == "b'busy'", statuses  # the worker serving this request
    assert all(re.fullmatch(r"b'(idle|busy)'", s) for s in statuses.values()), statuses
    assert "cache_get" in info["missing"], info["missing"]


def test_uwsgi_lock_excludes_across_workers(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    server, out = start(
        muleteer_server, tmp_path, "targets.py", "--processes", "2", env={"COUNTER": str(counter)}
    )
    get_json(server, "/raise?n=80")  # every worker adds 200 under uwsgi.lock()
    marks = wait_event(out, "lock-done", count=2, timeout=25)
    assert where(marks) == {"worker 1": 1, "worker 2": 1}
    assert counter.read_text() == "400"


def test_import_uwsgi_outside_the_server_is_an_import_error() -> None:
    import muleteer.compat.uwsgi  # noqa: F401 - importing muleteer installs nothing

    assert "uwsgi" not in sys.modules
    with pytest.raises(ImportError):
        importlib.import_module("uwsgi")
    # The same in a fresh interpreter, whatever other tests of this session imported.
    code = (
        "import muleteer, muleteer.compat.uwsgi\n"
        "try:\n"
        "    import uwsgi\n"
        "except ImportError as exc:\n"
        "    print('ImportError', exc.name)\n"
        "else:\n"
        "    print('imported', uwsgi)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "ImportError uwsgi", result.stdout + result.stderr


# -- 12. the PyPI uwsgidecorators, unchanged, on top of muleteer's uwsgi module -----------------

_NETWORK_TROUBLE = (
    "Could not find a version",
    "No matching distribution",
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "SSLError",
)


@pytest.fixture(scope="module")
def pypi_decorators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    target = tmp_path_factory.mktemp("pypi-uwsgidecorators")
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--target",
        str(target),
        "uwsgidecorators==1.1.0",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("pip could not install uwsgidecorators==1.1.0 from PyPI within 180 s")
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if any(sign in output for sign in _NETWORK_TROUBLE):
            pytest.skip(f"pip cannot reach the package index: {output.strip()[-300:]}")
        pytest.fail(f"pip install uwsgidecorators==1.1.0 failed:\n{output}")
    assert (target / "uwsgidecorators.py").is_file()
    yield target


def test_pypi_uwsgidecorators_runs_unchanged(
    muleteer_server: ServerFactory, tmp_path: Path, pypi_decorators: Path
) -> None:
    watch = tmp_path / "watched"
    watch.mkdir()
    server, out = start(
        muleteer_server,
        tmp_path,
        "pypi_app.py",
        "--pythonpath",
        str(pypi_decorators),
        "--processes",
        "2",
        "--mules",
        "2",
        env={"WATCH": str(watch)},
    )
    module = get_json(server, "/module")
    assert Path(module["file"]).resolve() == (pypi_decorators / "uwsgidecorators.py").resolve()
    assert module["hook_is_dispatcher"] is True
    mules = {1: one_pid(server, "mule 1"), 2: one_pid(server, "mule 2")}

    ticks = wait_event(out, "pypi-timer", count=2)
    assert all((m["mule"], m["pid"]) == (1, mules[1]) for m in ticks), ticks

    get_json(server, "/raise?n=90")
    runs = wait_event(out, "pypi-sig90")
    assert [(m["mule"], m["pid"], m["signum"]) for m in runs] == [(2, mules[2], 90)]

    (watch / "new-file").write_text("x")
    marks = wait_marks(
        out,
        lambda ms: {m["mule"] for m in of(ms, "pypi-filemon")} == {1, 2},
        what="the filemon handler in both mules",
    )
    assert {(m["mule"], m["pid"]) for m in of(marks, "pypi-filemon")} == set(mules.items())

    for value in ("one", "two", "three"):
        assert get_json(server, f"/offload?v={value}") == {"sent": True}
    calls = wait_event(out, "pypi-mulefunc", count=3)
    assert sorted(m["value"] for m in calls) == ["one", "three", "two"]
    assert all(m["mule"] in (1, 2) and m["pid"] == mules[m["mule"]] for m in calls), calls
    assert "Traceback" not in server.log_text()
