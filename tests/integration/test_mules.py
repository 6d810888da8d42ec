"""Mules, mule messages and farms, with real processes (issue "Mules, mule messages and farms").

The behaviour of record is uWSGI 2.0 (research/uwsgi-behaviour.md sections 1-3) with the
deliberate deviations of DESIGN.md section 1 / docs/migrating.md. The apps and mule
programs live in tests/apps/mules; they append one JSON line per event (with pid, mule
id, worker id, thread and time) to the file named by $OUT, and the tests poll that file
and the server log with deadlines.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import pid_alive, poll_file
from muleteer.pytest_plugin import ServerFactory, ServerProcess, free_port, wait_for

pytestmark = pytest.mark.integration

MULES = Path(__file__).resolve().parent.parent / "apps" / "mules"
APP = MULES / "app.py"

Record = dict[str, Any]


def script(name: str) -> str:
    return str(MULES / name)


def start(
    factory: ServerFactory,
    tmp_path: Path,
    *options: str,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[ServerProcess, Path]:
    """A server running tests/apps/mules/app.py, with tests/apps/mules on sys.path."""
    out = tmp_path / "out.jsonl"
    server = factory(
        "--pythonpath",
        str(MULES),
        *options,
        app=APP,
        env={"OUT": str(out), **(env or {})},
        **kwargs,
    )
    return server, out


def read_records(out: Path) -> list[Record]:
    try:
        text = out.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def wait_records(
    out: Path,
    predicate: Callable[[list[Record]], bool],
    timeout: float = 10.0,
    what: str = "",
) -> list[Record]:
    """Poll $OUT until `predicate(records)` holds; return the records."""

    def check() -> tuple[list[Record]] | None:
        records = read_records(out)
        return (records,) if predicate(records) else None

    try:
        return list(wait_for(check, timeout, what=what)[0])
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; records so far:\n{read_records(out)}") from None


def select(records: list[Record], event: str, **match: Any) -> list[Record]:
    return [
        r for r in records if r["event"] == event and all(r.get(k) == v for k, v in match.items())
    ]


def wait_event(
    out: Path, event: str, count: int = 1, timeout: float = 10.0, **match: Any
) -> list[Record]:
    records = wait_records(
        out,
        lambda rs: len(select(rs, event, **match)) >= count,
        timeout,
        what=f"{count} x {event} {match}",
    )
    return select(records, event, **match)


def ops(server: ServerProcess, *calls: dict[str, Any], timeout: float = 30.0) -> list[Any]:
    """Run calls to uwsgi.mule_msg / uwsgi.farm_msg in a worker (app.py's /ops)."""
    response = server.request(
        "POST",
        "/ops",
        body=json.dumps(list(calls)).encode(),
        headers={"Content-Type": "application/json"},
        timeout=timeout,
    )
    assert response.status == 200, response.text
    return list(json.loads(response.body))


def send(server: ServerProcess, message: str, target: Any = None, **extra: Any) -> Any:
    """mule_msg(message[, target]) in a worker; an int target is a mule, a str a farm."""
    call: dict[str, Any] = {"fn": "mule_msg", "msg": {"str": message}, **extra}
    if isinstance(target, int):
        call["target"] = {"int": target}
    elif isinstance(target, str):
        call["target"] = {"str": target}
    return ops(server, call)[0]


def get_json(server: ServerProcess, path: str, timeout: float = 10.0) -> Any:
    response = server.get(path, timeout=timeout)
    assert response.status == 200, response.text
    return json.loads(response.body)


def mule_pid(server: ServerProcess, mule_id: int, timeout: float = 5.0) -> int:
    """The pid of the one live process titled "muleteer mule N" (a child just forked
    still carries the master's title for a moment, hence the wait)."""

    def found() -> list[int]:
        pids = [
            pid
            for pid, title in server.children().items()
            if re.search(rf"muleteer mule {mule_id}\b", title)
        ]
        return pids if len(pids) == 1 else []

    try:
        return int(wait_for(found, timeout, what=f"one process titled muleteer mule {mule_id}")[0])
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {server.children()}") from None


def all_mule_pids(server: ServerProcess, count: int, timeout: float = 5.0) -> list[int]:
    """Wait until `count` children are titled "muleteer mule N"; return their pids."""
    try:
        wait_for(lambda: len(server.pids("mule")) == count, timeout, what=f"{count} mules")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {server.children()}") from None
    return server.pids("mule")


def wait_new_mule_pid(server: ServerProcess, mule_id: int, old: int, timeout: float = 10) -> int:
    def new_pid() -> int | None:
        titles = server.children()
        pids = [p for p, t in titles.items() if re.search(rf"muleteer mule {mule_id}\b", t)]
        return pids[0] if len(pids) == 1 and pids[0] != old else None

    return int(wait_for(new_pid, timeout, what=f"a new pid in mule slot {mule_id}"))


def answers(server: ServerProcess) -> bool:
    try:
        return server.get("/ids", timeout=2).status == 200
    except OSError:
        return False


def log_count(server: ServerProcess, pattern: str) -> int:
    regex = re.compile(pattern)
    return sum(1 for line in server.log_text().splitlines() if regex.search(line))


# --- 1. program forms ----------------------------------------------------------------------------


def test_program_forms_get_ids_in_option_order(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    # mule 1 signal-only, 2 a script, 3 module:function, 4 and 5 from --mules=2.
    server, out = start(
        muleteer_server,
        tmp_path,
        "--mule",
        f"--mule={script('recorder.py')}",
        "--mule=mulepkg.tasks:run",
        "--mules=2",
        env={"HOOK": "attr"},
    )
    starts = wait_event(out, "start", count=2)
    by_program = {r["program"]: r for r in starts}
    assert set(by_program) == {"recorder.py", "mulepkg.tasks:run"}
    recorder, tasks = by_program["recorder.py"], by_program["mulepkg.tasks:run"]
    assert (recorder["mule"], recorder["worker"], recorder["name"]) == (2, 0, "__main__")
    assert (tasks["mule"], tasks["worker"]) == (3, 0)
    assert (tasks["nargs"], tasks["nkwargs"]) == (0, 0)  # called with no arguments
    assert select(read_records(out), "main", mule=2)  # the __main__ block ran
    assert recorder["pid"] == mule_pid(server, 2)
    assert tasks["pid"] == mule_pid(server, 3)
    assert len(all_mule_pids(server, 5)) == 5

    for mule_id in (1, 2, 3, 4, 5):
        assert send(server, f"to-{mule_id}", mule_id) == {"value": True, "type": "bool"}
    # Signal-only mules (1, 4, 5) hand the message to uwsgi.mule_msg_hook; the programmed
    # ones (2, 3) read it with mule_get_msg(). Each arrives in the mule it was sent to.
    records = wait_records(
        out,
        lambda rs: len(select(rs, "hook")) >= 3 and len(select(rs, "msg")) >= 2,
        what="five messages received",
    )
    received = {r["msg"]: r for r in select(records, "hook") + select(records, "msg")}
    assert set(received) == {f"to-{i}" for i in (1, 2, 3, 4, 5)}
    for mule_id in (1, 2, 3, 4, 5):
        record = received[f"to-{mule_id}"]
        assert record["mule"] == mule_id and record["worker"] == 0
        assert record["pid"] == mule_pid(server, mule_id)
        assert record["type"] == "bytes"
    assert {received[f"to-{i}"]["event"] for i in (1, 4, 5)} == {"hook"}
    assert {received[f"to-{i}"]["event"] for i in (2, 3)} == {"msg"}

    ids = get_json(server, "/ids")
    assert (ids["worker"], ids["mule"]) == (1, 0)
    assert ids["pid"] in server.pids("worker")
    spawned = re.findall(r"spawned muleteer mule (\d+) \(pid: (\d+)\)", server.log_text())
    assert [int(m) for m, _ in spawned] == [1, 2, 3, 4, 5]


def test_ini_mule_forms(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    ini = tmp_path / "mules.ini"
    ini.write_text(f"[uwsgi]\nmule = true\nmule = true\nmule =\nmule = {script('recorder.py')}\n")
    server, out = start(muleteer_server, tmp_path, "--ini", str(ini), env={"HOOK": "attr"})
    (started,) = wait_event(out, "start")
    assert (started["mule"], started["worker"], started["name"]) == (4, 0, "__main__")
    assert len(all_mule_pids(server, 4)) == 4
    for mule_id in (1, 2, 3, 4):
        assert send(server, f"ini-{mule_id}", mule_id)["value"] is True
    records = wait_records(
        out, lambda rs: len(select(rs, "hook")) >= 3 and select(rs, "msg"), what="4 messages"
    )
    hooks = {r["msg"]: r for r in select(records, "hook")}
    assert set(hooks) == {"ini-1", "ini-2", "ini-3"}  # three signal-only mules
    for mule_id in (1, 2, 3):
        assert hooks[f"ini-{mule_id}"]["mule"] == mule_id
        assert hooks[f"ini-{mule_id}"]["pid"] == mule_pid(server, mule_id)
    (message,) = select(records, "msg")
    assert (message["msg"], message["mule"]) == ("ini-4", 4)


def test_module_function_mule_import_error_is_logged_with_traceback(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, _ = start(muleteer_server, tmp_path, "--mule=mulepkg.broken:run")
    server.wait_log(r"ModuleNotFoundError: No module named 'muleteer_test_no_such_module_xyz'")
    text = server.log_text()
    assert "mulepkg.broken:run" in text
    assert "Traceback (most recent call last)" in text
    assert "mulepkg/broken.py" in text  # the frame of the failing import
    # ... and the slot is respawned (with back-off), not abandoned.
    server.wait_log(r"mule 1 \(pid: \d+\) exited with status \d+, respawning")
    server.wait_log(r"spawned muleteer mule 1 \(pid: \d+\)", count=2)


# --- 2. respawn ----------------------------------------------------------------------------------


def test_mule_is_respawned_after_every_kind_of_end(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, f"--mule={script('recorder.py')}")
    (first,) = wait_event(out, "start")
    pid = first["pid"]
    assert pid == mule_pid(server, 1)
    endings = [
        ("return", "exited with status 30"),
        ("raise", "exited with status 30"),
        ("sysexit", "exited with status 3"),
        ("osexit", "exited with status 3"),
    ]
    delays = []
    for lives, (how, status) in enumerate(endings, start=2):
        sent_at = time.time()
        assert send(server, f"exit:{how}", 1)["value"] is True
        starts = wait_event(out, "start", count=lives)
        new = starts[-1]
        delays.append(round(new["time"] - sent_at, 2))
        assert new["pid"] != pid and new["mule"] == 1
        assert len(select(read_records(out), "main", pid=new["pid"])) == 1  # ran again
        server.wait_log(rf"mule 1 \(pid: {pid}\) {status}, respawning")
        assert new["pid"] == mule_pid(server, 1)
        pid = new["pid"]
    assert "RuntimeError: recorder was asked to raise" in server.log_text()

    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    new = wait_event(out, "start", count=len(endings) + 2)[-1]
    delays.append(round(new["time"] - killed_at, 2))
    assert new["pid"] != pid
    server.wait_log(rf"mule 1 \(pid: {pid}\) killed by signal 9, respawning")
    assert new["pid"] == mule_pid(server, 1)
    # The new life works: it receives messages.
    send(server, "after-respawn", 1)
    (got,) = wait_event(out, "msg", msg="after-respawn")
    assert got["pid"] == new["pid"]
    print(f"respawn delays (return, raise, sys.exit, os._exit, SIGKILL): {delays}")


def test_mule_that_exits_at_once_is_respawned_with_back_off(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, f"--mule={script('exits_at_once.py')}")
    server.wait_log(r"mule 1 keeps dying at start: respawn in 1\.6 s", timeout=15)
    starts = select(read_records(out), "start")
    # 0.1 + 0.2 + 0.4 + 0.8 s of back-off separate the first five lives; an unthrottled
    # loop would have started dozens of processes in that time.
    assert 5 <= len(starts) <= 6, [s["time"] for s in starts]
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(starts)]
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4, 0.8), strict=False):
        assert gap >= delay * 0.9, gaps
    assert starts[4]["time"] - starts[0]["time"] >= 1.4
    delays = re.findall(r"mule 1 keeps dying at start: respawn in ([\d.]+) s", server.log_text())
    assert delays[:5] == ["0.1", "0.2", "0.4", "0.8", "1.6"]
    assert len(set(s["pid"] for s in starts)) == len(starts)
    print(f"back-off gaps between lives: {[round(g, 2) for g in gaps]}")


# --- 3. messages survive the death of their mule -------------------------------------------------


def test_message_sent_while_the_mule_is_down_reaches_the_next_life(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    server, out = start(
        muleteer_server, tmp_path, f"--mule={script('recorder.py')}", env={"GATE": str(gate)}
    )
    (first,) = wait_event(out, "start")
    # Life 1 never reads (the gate is closed): this one is queued before it dies.
    assert send(server, "before-kill", 1)["value"] is True
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(first["pid"]), 5, what="mule 1 dead")
    assert send(server, "while-dead", 1)["value"] is True
    second = wait_event(out, "start", count=2)[-1]
    assert second["pid"] != first["pid"]
    gate.touch()
    messages = wait_event(out, "msg", count=2)
    assert [m["msg"] for m in messages] == ["before-kill", "while-dead"]
    assert {m["pid"] for m in messages} == {second["pid"]}


# --- 4. shared queue -----------------------------------------------------------------------------


def test_shared_queue_delivers_each_message_to_exactly_one_mule(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    recorder = f"--mule={script('recorder.py')}"
    server, out = start(muleteer_server, tmp_path, recorder, recorder, recorder)
    wait_event(out, "start", count=3)
    total = 300
    (result,) = ops(
        server, {"fn": "mule_msg", "msg": {"str": "shared-{i}"}, "repeat": total, "block": True}
    )
    assert all(v["value"] is True for v in result["all"])
    records = wait_event(out, "msg", count=total, timeout=20)
    counts = Counter(r["msg"] for r in records)
    assert set(counts) == {f"shared-{i}" for i in range(total)}
    assert max(counts.values()) == 1
    assert {r["mule"] for r in records} <= {1, 2, 3}
    print("shared queue distribution:", Counter(r["mule"] for r in records))


# --- 5. farms ------------------------------------------------------------------------------------


def test_farm_messages_reach_only_farm_members(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    recorder = f"--mule={script('recorder.py')}"
    # alpha = {1, 2}, beta = {2, 3}: mule 2 is in two farms, mule 4 in none. Mule 2 reads
    # with farm_get_msg(), the others with mule_get_msg() (farms=True by default).
    server, out = start(
        muleteer_server,
        tmp_path,
        *(recorder,) * 4,
        "--farm=alpha:1,2",
        "--farm=beta:2,3",
        env={"READER_2": "farm", "FARMS": "alpha,beta,gamma"},
    )
    starts = {r["mule"]: r for r in wait_event(out, "start", count=4)}
    assert starts[1]["farms"] == {"alpha": True, "beta": None, "gamma": None}
    assert starts[2]["farms"] == {"alpha": True, "beta": True, "gamma": None}
    assert starts[3]["farms"] == {"alpha": None, "beta": True, "gamma": None}
    assert starts[4]["farms"] == {"alpha": None, "beta": None, "gamma": None}
    assert [starts[i]["any_farm"] for i in (1, 2, 3, 4)] == [True, True, True, None]
    ids = get_json(server, "/ids")
    assert ids["in_farm_alpha"] is None and ids["in_farm"] is None  # a worker

    n = 20
    calls = []
    for farm in ("alpha", "beta"):
        calls += [
            {"fn": "mule_msg", "msg": {"str": f"{farm}-str-{{i}}"}, "target": {"str": farm}},
            {"fn": "mule_msg", "msg": {"str": f"{farm}-bytes-{{i}}"}, "target": {"bytes": farm}},
            {"fn": "farm_msg", "msg": {"str": f"{farm}-farm_msg-{{i}}"}, "farm": {"str": farm}},
        ]
    results = ops(server, *({**c, "repeat": n} for c in calls))
    for result in results:
        assert [v["value"] for v in result["all"]] == [True] * n, result
    assert send(server, "mule-4-sentinel", 4)["value"] is True

    total = 2 * 3 * n
    records = wait_records(
        out,
        lambda rs: len(select(rs, "msg")) >= total + 1,
        timeout=15,
        what=f"{total} farm messages and a sentinel",
    )
    messages = select(records, "msg")
    counts = Counter(r["msg"] for r in messages)
    assert max(counts.values()) == 1, counts.most_common(3)
    assert len(messages) == total + 1
    members = {"alpha": {1, 2}, "beta": {2, 3}}
    for record in messages:
        text = record["msg"]
        if text == "mule-4-sentinel":
            assert record["mule"] == 4
            continue
        farm = text.split("-")[0]
        assert record["mule"] in members[farm], record
        expected_via = "farm_get_msg" if record["mule"] == 2 else "mule_get_msg"
        assert record["via"] == expected_via
    assert not [r for r in messages if r["mule"] == 4 and r["msg"] != "mule-4-sentinel"]
    print("farm deliveries:", Counter((r["msg"].split("-")[0], r["mule"]) for r in messages))


# --- 6. mule_get_msg: timeout and the inverted signals flag --------------------------------------


def test_mule_get_msg_timeout_and_signals_flag(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(
        muleteer_server, tmp_path, f"--mule={script('sigmule.py')}", env={"DECORATED": "1"}
    )
    (started,) = wait_event(out, "start")
    # Signal 17 is registered by the app for target mule1 (@signal(17, target='mule1')).
    assert get_json(server, "/signal?num=17") == {"raised": 17}

    # With nothing to read, mule_get_msg(timeout=1) returns b'' after about a second, and
    # the default signals=True does not run the pending signal's handler.
    assert send(server, "timeout", 1)["value"] is True
    (timed_out,) = wait_event(out, "result", call="timeout")
    assert timed_out["value"] == "b''"
    assert 0.9 <= timed_out["elapsed"] <= 2.5
    assert send(server, "probe", 1)["value"] is True
    wait_event(out, "command", msg="probe")
    assert not select(read_records(out), "signal")  # still queued

    # mule_get_msg(signals=False) runs it in the calling thread and returns None.
    assert send(server, "signals-false", 1)["value"] is True
    (result,) = wait_event(out, "result", call="signals-false")
    assert result["value"] == "None" and result["caller"] == "caller"
    records = read_records(out)
    handled = select(records, "signal")
    assert len(handled) == 1
    assert handled[0]["num"] == 17
    assert (handled[0]["mule"], handled[0]["pid"]) == (1, started["pid"])
    assert handled[0]["thread"] == "caller"
    assert records.index(handled[0]) < records.index(result)

    # Raised again while the mule sits in the default mule_get_msg(): still queued, until
    # signal_wait() takes it, runs the handler and returns b''.
    assert get_json(server, "/signal?num=17") == {"raised": 17}
    assert send(server, "signal-wait", 1)["value"] is True
    (waited,) = wait_event(out, "result", call="signal-wait")
    assert waited["value"] == "b''" and waited["received"] == 17
    handled = select(read_records(out), "signal")
    assert len(handled) == 2 and handled[1]["thread"] == "MainThread"


# --- 7. two threads share one queue --------------------------------------------------------------


def test_two_threads_blocked_in_mule_get_msg_share_the_queue(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, f"--mule={script('threaded.py')}")
    wait_event(out, "ready", count=2)
    total = 2000
    (result,) = ops(
        server,
        {
            "fn": "mule_msg",
            "msg": {"str": "t-{i}"},
            "target": {"int": 1},
            "repeat": total,
            "block": True,
        },
    )
    assert all(v["value"] is True for v in result["all"])
    records = wait_event(out, "msg", count=total, timeout=25)
    counts = Counter(r["msg"] for r in records)
    assert set(counts) == {f"t-{i}" for i in range(total)}  # none lost
    assert max(counts.values()) == 1  # none duplicated
    per_thread = Counter(r["thread"] for r in records)
    assert set(per_thread) == {"reader-1", "reader-2"}, per_thread
    assert {r["pid"] for r in records} == {mule_pid(server, 1)}
    print("messages per thread:", dict(per_thread))


# --- 8. a burst to a slow mule -------------------------------------------------------------------


def test_burst_to_a_slow_mule_counts_every_rejection_and_block_loses_nothing(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, f"--mule={script('counter.py')}")
    wait_event(out, "start")
    n = 100_000

    # Non-blocking: the mule sleeps 0.2 ms per message, the queue fills, sends are refused.
    assert send(server, "CTRL:phase:nonblock:0.0002", 1, block=True)["value"] is True
    burst = get_json(server, f"/burst?n={n}&size=100&target=1&block=0", timeout=60)
    assert send(server, "CTRL:report", 1, block=True)["value"] is True
    (report,) = wait_event(out, "report", phase="nonblock", timeout=30)
    assert burst["sent"] == n
    assert burst["accepted"] + burst["rejected"] == n
    assert burst["rejected"] > 0
    assert report["received"] == report["distinct"] == burst["accepted"]
    full = [line for line in server.log_text().splitlines() if "MULE MSG QUEUE IS FULL" in line]
    assert full and "mule 1" in full[0]
    assert len(full) <= burst["elapsed"] / 5 + 2  # rate-limited, not one line per refusal
    print(
        f"non-blocking burst: {n / burst['elapsed']:.0f} msg/s, accepted {burst['accepted']}, "
        f"rejected {burst['rejected']}, {len(full)} warning line(s)"
    )

    # block=True: the sender waits for room; every message arrives.
    assert send(server, "CTRL:phase:block:0", 1, block=True)["value"] is True
    blocked = get_json(server, f"/burst?n={n}&size=100&target=1&block=1", timeout=60)
    assert send(server, "CTRL:report", 1, block=True)["value"] is True
    (report,) = wait_event(out, "report", phase="block", timeout=30)
    assert (blocked["accepted"], blocked["rejected"]) == (n, 0)
    assert report["received"] == report["distinct"] == n
    assert (report["low"], report["high"]) == (0, n - 1)
    print(f"blocking burst: {n / blocked['elapsed']:.0f} msg/s, 0 rejected")


# --- 9. mule_msg argument rules ------------------------------------------------------------------


def test_mule_msg_argument_rules(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    recorder = f"--mule={script('recorder.py')}"
    server, out = start(muleteer_server, tmp_path, recorder, recorder, "--farm=f:1")
    wait_event(out, "start", count=2)
    results = ops(
        server,
        {"fn": "mule_msg", "msg": {"str": "h\u00e9llo"}, "target": {"int": 1}},
        {"fn": "mule_msg", "msg": {"bytes": "\x00\xffbin"}, "target": {"int": 1}},
        {"fn": "mule_msg", "msg": {"str": "shared-none"}},
        {"fn": "mule_msg", "msg": {"str": "shared-zero"}, "target": {"int": 0}},
        {"fn": "mule_msg", "msg": {"size": 65536, "fill": "z"}, "target": {"int": 2}},
        {"fn": "farm_msg", "msg": {"str": "farm-f"}, "farm": {"str": "f"}},
        {"fn": "mule_msg", "msg": {"str": "x"}, "target": {"int": 3}},
        {"fn": "mule_msg", "msg": {"str": "x"}, "target": {"int": -1}},
        {"fn": "mule_msg", "msg": {"str": "x"}, "target": {"str": "nope"}},
        {"fn": "mule_msg", "msg": {"str": "x"}, "target": {"bytes": "nope"}},
        {"fn": "mule_msg", "msg": {"size": 65537}, "target": {"int": 1}},
        {"fn": "mule_msg", "msg": {"size": 1 << 20}},
        {"fn": "farm_msg", "msg": {"str": "x"}, "farm": {"str": "nope"}},
    )
    ok, errors, unknown_farm_msg = results[:6], results[6:12], results[12]
    assert ok == [{"value": True, "type": "bool"}] * 6
    assert [e.get("error") for e in errors] == ["ValueError"] * 6, errors
    assert "65536" in errors[4]["message"] and "65536" in errors[5]["message"]
    assert unknown_farm_msg == {"value": False, "type": "bool"}  # logged, not raised
    server.wait_log(r"unknown farm.*nope")

    records = wait_event(out, "msg", count=6)
    by_text = {r.get("msg", "<long>"): r for r in records}
    assert {r["type"] for r in records} == {"bytes"}
    assert by_text["h\u00e9llo".encode().decode("latin-1")]["mule"] == 1  # str -> UTF-8 bytes
    assert by_text["\x00\xffbin"]["mule"] == 1
    assert by_text["farm-f"]["mule"] == 1
    assert {by_text["shared-none"]["mule"], by_text["shared-zero"]["mule"]} <= {1, 2}
    big = by_text["<long>"]
    assert (big["mule"], big["len"]) == (2, 65536)
    # Nothing that raised was queued anywhere.
    assert len(select(read_records(out), "msg")) == 6


def test_mule_msg_without_mules_raises(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    server, _ = start(muleteer_server, tmp_path)
    results = ops(
        server,
        {"fn": "mule_msg", "msg": {"str": "x"}},
        {"fn": "mule_msg", "msg": {"str": "x"}, "target": {"int": 1}},
    )
    for result in results:
        assert result["error"] == "ValueError"
        assert "no mule configured" in result["message"]


# --- 10. signal-only mules, hooks, @mulefunc -----------------------------------------------------


def test_signal_only_mules_call_both_kinds_of_message_hook(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(muleteer_server, tmp_path, "--mules=2", env={"HOOK": "both"})
    assert send(server, "to-1", 1)["value"] is True
    assert send(server, "to-2", 2)["value"] is True
    (shared,) = ops(server, {"fn": "mule_msg", "msg": {"str": "any-{i}"}, "repeat": 10})
    assert all(v["value"] is True for v in shared["all"])
    records = wait_event(out, "hook", count=24)
    assert len(records) == 24
    texts = ["to-1", "to-2", *(f"any-{i}" for i in range(10))]
    for text in texts:
        pair = [r for r in records if r["msg"] == text]
        # uwsgi.mule_msg_hook first, then the installed hook, in the same mule, once each.
        assert [r["hook"] for r in pair] == ["attr", "install"], pair
        assert len({r["pid"] for r in pair}) == 1 and pair[0]["type"] == "bytes"
        assert pair[0]["worker"] == 0
        if text == "to-1":
            assert pair[0]["mule"] == 1
        elif text == "to-2":
            assert pair[0]["mule"] == 2
        else:
            assert pair[0]["mule"] in (1, 2)
        assert pair[0]["pid"] == mule_pid(server, pair[0]["mule"])


def test_signal_only_mule_without_hook_counts_and_logs(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, _ = start(muleteer_server, tmp_path, "--mules=1", env={"HOOK": "none"})
    (result,) = ops(
        server,
        {"fn": "mule_msg", "msg": {"size": 5}, "target": {"int": 1}, "repeat": 100, "block": True},
    )
    assert all(v["value"] is True for v in result["all"])
    server.wait_log(r"\*\*\* mule 1 received a 5 bytes message and has no message hook")
    server.wait_log(r"mule 1 received a 5 bytes message .*\(100 such messages so far\)")
    assert log_count(server, r"\(1 such messages so far\)") == 1


def test_mulefunc_runs_in_a_mule_mule_n_or_farm(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(
        muleteer_server, tmp_path, "--mules=3", "--farm=grp:3", env={"DECORATED": "1"}
    )
    for i in range(5):
        for kind in ("any", "two", "grp"):
            assert get_json(server, f"/mulefunc?kind={kind}&tag={kind}-{i}") == {"returned": "None"}
    records = wait_event(out, "mulefunc", count=15)
    assert len(records) == 15
    assert Counter(r["tag"] for r in records) == Counter(
        f"{k}-{i}" for k in ("any", "two", "grp") for i in range(5)
    )
    for record in records:
        assert record["worker"] == 0
        assert record["pid"] == mule_pid(server, record["mule"])
        if record["kind"] == "any":
            assert record["mule"] in (1, 2, 3)
        elif record["kind"] == "two":
            assert record["mule"] == 2
        else:
            assert record["mule"] == 3  # the only member of farm grp


# --- 11. master death ----------------------------------------------------------------------------


def test_mules_die_with_the_master(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    server, out = start(muleteer_server, tmp_path, f"--mule={script('recorder.py')}", "--mules=2")
    wait_event(out, "start")
    mules = all_mule_pids(server, 3)
    server.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: not any(pid_alive(pid) for pid in mules),
        timeout=2,
        what=f"mules {mules} to die with their master",
    )
    print(f"mules dead {time.monotonic() - killed:.2f} s after the master")


# --- 12. mule reloads ----------------------------------------------------------------------------


def test_touch_mules_reload_replaces_mules_only(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    touch = tmp_path / "mules.touch"
    touch.write_text("")
    server, out = start(
        muleteer_server,
        tmp_path,
        "--processes",
        "2",
        f"--mule={script('recorder.py')}",
        "--mule",
        f"--touch-mules-reload={touch}",
    )
    wait_event(out, "start")
    old_mules = {i: mule_pid(server, i) for i in (1, 2)}
    workers = sorted(wait_for(lambda: len(server.pids("worker")) == 2 and server.pids("worker")))
    later = time.time() + 10
    os.utime(touch, (later, later))
    new_mules = {i: wait_new_mule_pid(server, i, old_mules[i], timeout=10) for i in (1, 2)}
    assert not set(new_mules.values()) & set(old_mules.values())
    assert sorted(server.pids("worker")) == workers
    for pid in old_mules.values():
        wait_for(lambda pid=pid: not pid_alive(pid), 5, what=f"old mule {pid} gone")
    second = wait_event(out, "start", count=2)[-1]
    assert second["pid"] == new_mules[1]


def test_sighup_reload_gives_new_mules(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    server, out = start(muleteer_server, tmp_path, f"--mule={script('recorder.py')}", "--mule")
    wait_event(out, "start")
    old = {i: mule_pid(server, i) for i in (1, 2)}
    old_workers = wait_for(lambda: server.pids("worker"), what="a worker")
    server.send_signal(signal.SIGHUP)
    new = {i: wait_new_mule_pid(server, i, old[i], timeout=15) for i in (1, 2)}
    assert not set(new.values()) & set(old.values())
    titles = server.children()
    assert titles[new[1]].startswith("muleteer mule 1")
    assert titles[new[2]].startswith("muleteer mule 2")
    assert not set(server.pids("worker")) & set(old_workers)
    second = wait_event(out, "start", count=2, timeout=15)[-1]
    assert second["pid"] == new[1]
    # The reloaded mule works.
    wait_for(lambda: server.get("/ids").status == 200, 10)
    assert send(server, "after-reload", 1)["value"] is True
    (got,) = wait_event(out, "msg", msg="after-reload")
    assert got["pid"] == new[1]


# --- 13. the seed --------------------------------------------------------------------------------


def test_seed_programmed_mule_example(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    logto = tmp_path / "logto.log"
    port = free_port()
    server = muleteer_server(
        "--http-socket",
        f"127.0.0.1:{port}",
        f"--mule={script('seed_mule.py')}",
        "--pythonpath",
        str(MULES),
        "--logto",
        str(logto),
        app=APP,
        env={"OUT": str(tmp_path / "out.jsonl")},
        listen=False,
        ready=False,
        port=port,
    )
    # With --logto the server's own lines (and the mule's prints) go to that file.
    poll_file(logto, lambda text: "spawned muleteer mule 1" in text, timeout=20)
    wait_for(lambda: answers(server), 10, what="the port to answer")
    poll_file(logto, lambda text: "Hi! I am loop2." in text and "yawn." in text)
    for i in range(3):
        assert send(server, f"seed-msg-{i}", 1)["value"] is True
    assert send(server, "seed-any")["value"] is True
    text = poll_file(
        logto,
        lambda t: all(f"b'seed-msg-{i}'" in t for i in range(3)) and "b'seed-any'" in t,
    )
    assert text.count("loop1: Waiting for messages... yawn.") >= 5
    text = poll_file(logto, lambda t: t.count("This is a thread!") >= 2, timeout=10)
    assert "Traceback" not in text


def test_seed_prints_reach_the_log_without_pythonunbuffered(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    """A real deployment does not set PYTHONUNBUFFERED. uWSGI 2.0 makes a mule's
    sys.stdout line-buffered (checked with uWSGI 2.0.31: ``line_buffering`` is True with
    stdout on a --logto file), so the seed's prints show up in the log as they happen."""
    logto = tmp_path / "logto.log"
    port = free_port()
    server = muleteer_server(
        "--http-socket",
        f"127.0.0.1:{port}",
        f"--mule={script('seed_mule.py')}",
        "--logto",
        str(logto),
        env={"PYTHONUNBUFFERED": ""},  # empty = not set, for Python
        listen=False,
        ready=False,
        port=port,
    )
    poll_file(logto, lambda text: "spawned muleteer mule 1" in text, timeout=20)
    poll_file(
        logto,
        lambda t: "Hi! I am loop2." in t and "loop1: Waiting for messages... yawn." in t,
        timeout=5,
    )
    # The thread prints every 2 s: two lines within 10 s of the start.
    poll_file(logto, lambda t: t.count("This is a thread!") >= 2, timeout=10)
    assert server.proc is not None and server.proc.poll() is None


# --- 14. mule harakiri ---------------------------------------------------------------------------


def test_mule_harakiri_for_signal_handlers_and_user_harakiri(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    server, out = start(
        muleteer_server,
        tmp_path,
        "--mule",
        f"--mule={script('harakiri_user.py')}",
        "--mule-harakiri=1",
        env={"DECORATED": "1"},
    )
    (user,) = wait_event(out, "start")
    signal_mule = mule_pid(server, 1)

    # Signal 18's handler (target mule1, a signal-only mule) sleeps 5 s: killed after ~1 s.
    assert get_json(server, "/signal?num=18") == {"raised": 18}
    (began,) = wait_event(out, "signal-start")
    assert (began["mule"], began["pid"]) == (1, signal_mule)
    server.wait_log(rf"\*\*\* HARAKIRI ON MULE 1 HANDLING SIGNAL 18 \(pid: {signal_mule}\) \*\*\*")
    server.wait_log(rf"mule 1 \(pid: {signal_mule}\) killed by signal 9, respawning")
    killed_after = time.time() - began["time"]
    assert killed_after < 4.5
    wait_new_mule_pid(server, 1, signal_mule)

    # set_user_harakiri(1) in a programmed mule that then sleeps: killed and respawned.
    assert send(server, "go", 2)["value"] is True
    (armed,) = wait_event(out, "armed")
    server.wait_log(rf"\*\*\* HARAKIRI ON MULE 2 \(pid: {user['pid']}\) \*\*\*")
    server.wait_log(rf"mule 2 \(pid: {user['pid']}\) killed by signal 9, respawning")
    user_killed_after = time.time() - armed["time"]
    respawned = wait_event(out, "start", count=2, mule=2)[-1]
    assert respawned["pid"] != user["pid"]
    assert respawned["pid"] == mule_pid(server, 2)
    assert not select(read_records(out), "signal-end")
    assert not select(read_records(out), "woke")
    print(
        f"harakiri kills after {killed_after:.1f} s (signal) and {user_killed_after:.1f} s (user)"
    )
