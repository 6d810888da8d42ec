"""Master and worker lifecycle against a real server: respawn, master death, reloads,
shutdown signals, harakiri, recycling, start-up failures, lazy apps, files and titles.

Reference behaviour: uWSGI 2.0 (research/uwsgi-behaviour.md section 9) and the
supervision plan (research/reliability.md sections 3 and 6, D1-D8).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import stat
import statistics
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from helpers import (
    alive,
    app_path,
    poll_file,
    proc_age,
    proc_state,
    read_all,
    split_response,
    stat_fields,
    status_of,
)
from loadclient import BackgroundLoad, LoadResult, run_load
from muleteer.pytest_plugin import (
    Response,
    ServerFactory,
    ServerProcess,
    process_title,
    wait_for,
)
from muleteer.top import fetch

pytestmark = pytest.mark.integration

TESTAPP = app_path("testapp.py")
HELLO = app_path("hello.py")

BROKEN_APP = """\
import os

VALUE = 1
raise RuntimeError("boom at import")
"""

PRINTING_APP = """\
print("printer app imported", flush=True)


def application(environ, start_response):
    print("app says hello to", environ["PATH_INFO"], flush=True)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
"""


# -- /proc helpers --------------------------------------------------------------------------


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped by whoever adopted it."""
    return not alive(pid)


def zombie_children(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields and int(fields[1]) == ppid and fields[0] == b"Z":
                out.append(int(entry))
    return out


# -- request helpers ------------------------------------------------------------------------


def try_get(server: ServerProcess, path: str = "/", timeout: float = 2.0) -> Response | None:
    """A 200 response, or None when the server refused, reset or did not answer in time."""
    try:
        response = server.get(path, timeout=timeout)
    except (OSError, http.client.HTTPException):
        return None
    return response if response.status == 200 else None


def body_json(response: Response) -> dict[str, object]:
    data = json.loads(response.body)
    assert isinstance(data, dict)
    return data


def count_lines(server: ServerProcess, pattern: str) -> int:
    regex = re.compile(pattern)
    return sum(1 for line in server.log_text().splitlines() if regex.search(line))


def unix_http(path: str | Path, target: str = "/", timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return read_all(sock, timeout)


def accepted_by(pid: int, client_port: int) -> bool:
    """True once process `pid` holds the server end of the client's TCP connection."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.raddr and c.raddr.port == client_port for c in conns)


def worker_pids(server: ServerProcess, count: int, timeout: float = 10.0) -> list[int]:
    """Wait until exactly `count` workers run; their pids, by slot order."""

    def ready() -> list[int]:
        pids = [server.pids(f"worker {n}") for n in range(1, count + 1)]
        if all(len(p) == 1 for p in pids) and len(server.pids("worker")) == count:
            return [p[0] for p in pids]
        return []

    return list(wait_for(ready, timeout, what=f"{count} workers"))


# -- 1. respawn -------------------------------------------------------------------------------


def test_sigkilled_worker_is_replaced_in_the_same_slot_within_a_second(
    muleteer_server: ServerFactory,
) -> None:
    server = muleteer_server("--processes", "1", app=TESTAPP)
    latencies: list[float] = []
    killed: list[int] = []
    for _ in range(10):
        (old,) = worker_pids(server, 1)
        # A death soon after start counts as a boot failure (respawn back-off): let the
        # victim live past the server's 1 s minimum lifetime first.
        wait_for(lambda old=old: proc_age(old) >= 1.2, 5.0, what="victim age")
        start = time.monotonic()
        os.kill(old, signal.SIGKILL)
        # With one worker, any answer after the kill comes from the replacement.
        response = wait_for(lambda: try_get(server, "/", timeout=2.0), 5.0, what="replacement")
        latencies.append(time.monotonic() - start)
        killed.append(old)
        new = int(response.headers["X-Pid"])
        assert new != old
        assert response.headers["X-Worker"] == "1"
        assert process_title(new) == "muleteer worker 1"
        assert server.pids("worker 1") == [new]
    p50, worst = statistics.median(latencies), max(latencies)
    print(
        f"respawn latency over {len(latencies)} kills: p50 {p50 * 1000:.1f} ms, "
        f"max {worst * 1000:.1f} ms"
    )
    assert worst < 1.0, latencies
    for pid in killed:
        server.wait_log(rf"DAMN ! worker 1 \(pid: {pid}\) died, killed by signal 9", 2.0)
    # Every dead worker was reaped: no zombie among the master's children, none left at all.
    wait_for(lambda: not zombie_children(server.pid), 2.0, what="no zombie children")
    assert all(proc_state(pid) == "" for pid in killed)
    assert server.proc is not None and server.proc.poll() is None


# -- 2. master death --------------------------------------------------------------------------


def test_every_child_dies_with_a_sigkilled_master(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--processes", "2", "--mules", "1", app=TESTAPP)
    workers = worker_pids(server, 2)
    mules = wait_for(lambda: server.pids("mule 1"), 10.0, what="mule 1")
    children = set(server.children())
    assert set(workers) | set(mules) <= children
    assert try_get(server) is not None
    start = time.monotonic()
    server.send_signal(signal.SIGKILL)
    assert server.wait_exit(5) == -signal.SIGKILL
    wait_for(
        lambda: all(is_dead(pid) for pid in children),
        2.0,
        what=f"children {sorted(children)} to die: "
        + ", ".join(f"{p}={proc_state(p) or 'gone'}" for p in sorted(children)),
    )
    elapsed = time.monotonic() - start
    assert elapsed < 2.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_every_child_dies_with_a_master_sigkilled_during_a_reload(
    muleteer_server: ServerFactory,
) -> None:
    server = muleteer_server("--processes", "2", "--mules", "1", app=TESTAPP)
    workers = worker_pids(server, 2)
    wait_for(lambda: server.pids("mule 1"), 10.0, what="mule 1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(b"GET /slow?s=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        busy = wait_for(lambda: [pid for pid in workers if accepted_by(pid, client_port)], 5.0)[0]
        server.send_signal(signal.SIGHUP)
        server.wait_log(r"\.\.\.gracefully killing workers\.\.\.", 5.0)
        # The busy worker finishes its request before the re-exec: the reload is under way.
        assert not is_dead(busy)
        children = set(server.children()) | {busy}
        start = time.monotonic()
        server.send_signal(signal.SIGKILL)
        assert server.wait_exit(5) == -signal.SIGKILL
        wait_for(lambda: all(is_dead(pid) for pid in children), 2.0, what="children to die")
        elapsed = time.monotonic() - start
    assert elapsed < 2.0
    assert busy in children
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


# -- 3. graceful reload -----------------------------------------------------------------------


def test_graceful_reloads_under_load_lose_no_request(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--processes", "2", app=TESTAPP)
    master = server.pid
    generations = [worker_pids(server, 2)]
    with BackgroundLoad(server.port, duration=8.0, concurrency=8, keepalive=False) as load:
        wait_for(lambda: load.result is None and count_lines(server, r"\] GET / ") >= 20, 5.0)
        for reload in range(1, 4):
            sent = time.monotonic()
            server.send_signal(signal.SIGHUP)
            server.wait_log(r"binary reloading muleteer", 10.0, count=reload)
            server.wait_log(r"spawned muleteer worker", 10.0, count=2 * (reload + 1))
            previous = set(generations[-1])
            new = wait_for(
                lambda previous=previous: (
                    (pids := worker_pids(server, 2)) and not previous & set(pids) and pids
                ),
                10.0,
                what="a new generation of workers",
            )
            generations.append(list(new))
            assert server.proc is not None and server.proc.poll() is None
            assert process_title(master) == "muleteer master"
            # SIGHUPs 2 s apart: pace the reloads against the clock.
            wait_for(lambda sent=sent: time.monotonic() - sent >= 2.0, 5.0)
        result = load.join()
    print(f"reload under load: {len(result.outcomes)} requests, {len(result.failed)} failed")
    assert result.failed == [], result.errors()
    assert len(result.outcomes) >= 200
    # The same master process re-executed itself each time.
    assert server.proc is not None and server.proc.poll() is None
    assert count_lines(server, rf"\[master {master}\] \.\.\.gracefully killing workers") == 3
    assert count_lines(server, rf"\[master {master}\] binary reloading muleteer") == 3
    assert count_lines(server, rf"\[master {master}\] spawned muleteer worker") == 8
    # Every generation is new, and each served part of the load.
    all_pids = [pid for gen in generations for pid in gen]
    assert len(set(all_pids)) == 8
    served = {int(body_json(Response(200, {}, o.body))["pid"]) for o in result.ok}
    assert served <= set(all_pids)
    for gen in generations[1:]:
        assert served & set(gen), f"generation {gen} served nothing"


def test_request_in_flight_during_sighup_completes(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--processes", "1", app=TESTAPP)
    (old,) = worker_pids(server, 1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wait_for(lambda: accepted_by(old, client_port), 5.0, what="the worker to accept")
        server.send_signal(signal.SIGHUP)
        data = read_all(sock, 10.0)
    status, headers, body = split_response(data)
    assert status == 200, data
    assert headers["x-pid"] == str(old)
    assert json.loads(body) == {"slept": True}
    server.wait_log(rf"gracefully stopping worker 1 \(pid: {old}\)", 5.0)
    server.wait_log(r"binary reloading muleteer", 10.0)
    (new,) = wait_for(lambda: [p for p in server.pids("worker 1") if p != old], 10.0)
    response = wait_for(lambda: try_get(server), 5.0)
    assert response.headers["X-Pid"] == str(new)


def test_a_request_sent_on_an_idle_keep_alive_connection_during_a_stop_is_served(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    """A worker told to stop keeps its idle keep-alive connections open for a moment
    (0.1 s): a request that arrives then is answered, with ``Connection: close``, instead
    of meeting a closed socket."""
    stats = str(tmp_path / "stats.sock")
    server = muleteer_server("--processes", "1", "--stats", stats, app=TESTAPP)
    (old,) = worker_pids(server, 1)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        idle.sendall(request)
        first = idle.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and b"close" not in first.lower(), first
        os.kill(old, signal.SIGHUP)  # the worker alone: a graceful stop of that worker
        wait_for(lambda: fetch(stats)["workers"][0]["accepting"] == 0, 0.08, 0.002)
        idle.sendall(request)
        data = read_all(idle, 10.0)  # the answer, then end of file
    status, headers, _ = split_response(data)
    assert status == 200, data
    assert headers["x-pid"] == str(old)
    assert headers["connection"] == "close"
    server.wait_log(rf"gracefully stopping worker 1 \(pid: {old}\)", 5.0)


# -- 4. SIGHUP storm --------------------------------------------------------------------------


def test_sighup_storm_is_coalesced(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--processes", "2", app=HELLO)
    master = server.pid
    for _ in range(1000):
        os.kill(master, signal.SIGHUP)
    server.wait_log(r"binary reloading muleteer", 10.0)

    def settled() -> bool:
        reloads = count_lines(server, r"binary reloading muleteer")
        spawned = count_lines(server, r"spawned muleteer worker")
        return (
            spawned == 2 * (reloads + 1)
            and len(server.pids("worker")) == 2
            and try_get(server) is not None
        )

    wait_for(settled, 20.0, what="the server to settle after the storm")
    # Coalescing means no reload is still pending: watch the count stay put for 1 s.
    quiet_until = time.monotonic() + 1.0
    while time.monotonic() < quiet_until:
        assert count_lines(server, r"binary reloading muleteer") <= 3
        time.sleep(0.05)
    reloads = count_lines(server, r"binary reloading muleteer")
    print(f"1000 SIGHUPs -> {reloads} reload(s)")
    assert 1 <= reloads <= 3
    assert server.proc is not None and server.proc.poll() is None and server.pid == master
    assert server.get("/").body == b"Hello World!"


# -- 5. master signals ------------------------------------------------------------------------


def test_sigterm_without_die_on_term_is_a_brutal_reload(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--processes", "2", app=TESTAPP)
    old = worker_pids(server, 2)
    # Brutal: a request in flight is not waited for.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    client_port = sock.getsockname()[1]
    sock.sendall(b"GET /slow?s=8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    wait_for(lambda: any(accepted_by(pid, client_port) for pid in old), 5.0)
    start = time.monotonic()
    server.send_signal(signal.SIGTERM)
    with sock:
        data = read_all(sock, 10.0)
    assert data == b"" and time.monotonic() - start < 2.0
    server.wait_log(r"\.\.\.brutally killing workers\.\.\.", 5.0)
    server.wait_log(r"binary reloading muleteer", 10.0)
    new = wait_for(
        lambda: (pids := worker_pids(server, 2)) and not set(pids) & set(old) and pids, 10.0
    )
    assert server.proc is not None and server.proc.poll() is None
    assert process_title(server.pid) == "muleteer master"
    assert int(wait_for(lambda: try_get(server), 5.0).headers["X-Pid"]) in new
    assert "goodbye to muleteer." not in server.log_text()


@pytest.mark.parametrize(
    ("signame", "options"),
    [("SIGTERM", ("--die-on-term",)), ("SIGINT", ()), ("SIGQUIT", ())],
)
def test_shutdown_signals_exit_cleanly(
    muleteer_server: ServerFactory, signame: str, options: tuple[str, ...]
) -> None:
    server = muleteer_server("--processes", "2", "--mules", "1", *options, app=TESTAPP)
    children = set(worker_pids(server, 2)) | set(wait_for(lambda: server.pids("mule 1"), 10.0))
    server.send_signal(getattr(signal, signame))
    assert server.wait_exit(15) == 0
    log_text = server.log_text()
    assert "SIGINT/SIGQUIT received...killing workers..." in log_text
    assert log_text.rstrip().splitlines()[-1].endswith("goodbye to muleteer.")
    assert "binary reloading" not in log_text
    assert all(is_dead(pid) for pid in children)


def test_sigusr1_logs_per_slot_stats(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--processes", "2", "--mules", "1", app=TESTAPP)
    w1, w2 = worker_pids(server, 2)
    (m1,) = wait_for(lambda: server.pids("mule 1"), 10.0)
    server.send_signal(signal.SIGUSR1)
    assert server.wait_log(rf"worker 1 pid={w1}\b", 5.0)
    assert server.wait_log(rf"worker 2 pid={w2}\b", 5.0)
    assert server.wait_log(rf"mule 1 pid={m1}\b", 5.0)
    assert try_get(server) is not None
    assert worker_pids(server, 2) == [w1, w2]


# -- 6. harakiri ------------------------------------------------------------------------------


def _timed_raw_request(port: int, target: str, out: dict[str, object]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        start = time.monotonic()
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = read_all(sock, 15.0)
        out["elapsed"] = time.monotonic() - start
        out["data"] = data


def test_harakiri_answers_504_and_respawns_the_worker(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--processes", "2", "--harakiri", "2", app=TESTAPP)
    before = worker_pids(server, 2)
    out: dict[str, object] = {}
    slow = threading.Thread(target=_timed_raw_request, args=(server.port, "/slow?s=10", out))
    slow.start()
    fast: list[int] = []
    while slow.is_alive():
        fast.append(server.get("/", timeout=5).status)
    slow.join()
    data, elapsed = out["data"], out["elapsed"]
    assert isinstance(data, bytes) and isinstance(elapsed, float)
    print(f"harakiri: {status_of(data)} after {elapsed:.2f} s; {len(fast)} fast requests")
    assert status_of(data) == 504, data
    assert 2.0 <= elapsed <= 3.5
    (line,) = server.wait_log(r"\*\*\* HARAKIRI ON WORKER \d+ \(pid: \d+, try: 1", 2.0)
    match = re.search(r"WORKER (\d+) \(pid: (\d+)", line)
    assert match is not None
    slot, victim = int(match[1]), int(match[2])
    assert victim == before[slot - 1]
    server.wait_log(rf"spawned muleteer worker {slot} ", 2.0, count=2)
    after = worker_pids(server, 2)
    assert after[slot - 1] != victim and after[2 - slot] == before[2 - slot]
    assert len(fast) >= 10 and fast == [200] * len(fast)
    assert try_get(server) is not None


def test_harakiri_after_the_response_started_closes_the_connection(
    muleteer_server: ServerFactory,
) -> None:
    server = muleteer_server("--processes", "2", "--harakiri", "2", app=TESTAPP)
    out: dict[str, object] = {}
    _timed_raw_request(server.port, "/slowstream?s=10", out)
    data, elapsed = out["data"], out["elapsed"]
    assert isinstance(data, bytes) and isinstance(elapsed, float)
    print(f"harakiri on a started response: closed after {elapsed:.2f} s")
    assert status_of(data) == 200
    assert b"first" in data and b"second" not in data
    assert b"504" not in data
    assert 2.0 <= elapsed <= 3.5
    server.wait_log(r"\*\*\* HARAKIRI ON WORKER \d+", 2.0)
    server.wait_log(r"spawned muleteer worker", 2.0, count=3)


# -- 7-8. recycling ---------------------------------------------------------------------------


def served_by_pid(result: LoadResult) -> dict[int, int]:
    per_pid: dict[int, int] = {}
    for outcome in result.ok:
        pid = int(body_json(Response(200, {}, outcome.body))["pid"])
        per_pid[pid] = per_pid.get(pid, 0) + 1
    return per_pid


def test_max_requests_recycles_a_worker_at_its_quota(muleteer_server: ServerFactory) -> None:
    server = muleteer_server(
        "--processes", "1", "--max-requests", "20", "--min-worker-lifetime", "0", app=TESTAPP
    )
    result = run_load(server.port, duration=60.0, concurrency=4, keepalive=False, requests=300)
    assert len(result.outcomes) == 300
    assert result.failed == [], result.errors()
    per_pid = served_by_pid(result)
    # A worker finishes the connections it had already accepted when it reached its
    # quota: at most the client's 4 concurrent connections beyond the 20.
    assert max(per_pid.values()) <= 24, per_pid
    assert len(per_pid) >= 300 // 24, per_pid
    assert server.wait_log(r"The work of process \d+ is done \(max requests reached \(20 >= 20\)")
    # A worker that retired after its quota is not a boot failure: no respawn back-off.
    assert "keeps dying at start" not in server.log_text()


def test_max_requests_recycles_take_turns_without_failures(
    muleteer_server: ServerFactory,
) -> None:
    """Two workers with a small quota under load: one recycle at a time (a worker whose
    quota is reached waits while a sibling's replacement is younger than RECYCLE_GAP, or
    a sibling fell due first), never a failed request, and no worker retires early."""
    server = muleteer_server(
        "--processes", "2", "--max-requests", "20", "--min-worker-lifetime", "0", app=TESTAPP
    )
    result = run_load(server.port, duration=2.0, concurrency=4, keepalive=False)
    assert result.failed == [], result.errors()
    per_pid = served_by_pid(result)
    live = set(worker_pids(server, 2))
    retired = {pid: n for pid, n in per_pid.items() if pid not in live}
    assert len(retired) >= 4, per_pid
    assert min(retired.values()) >= 20, per_pid
    print(f"max-requests, 2 workers: {len(result.outcomes)} requests over {len(per_pid)} pids")
    for slot in (1, 2):
        assert re.search(rf"worker {slot} \(pid: \d+\) exited with status 17", server.log_text())
    assert "keeps dying at start" not in server.log_text()


def test_reload_on_rss_recycles_a_growing_worker(muleteer_server: ServerFactory) -> None:
    server = muleteer_server(
        "--processes", "1", "--reload-on-rss", "60", "--min-worker-lifetime", "0", app=TESTAPP
    )
    (old,) = worker_pids(server, 1)
    # The check runs after each request: the worker answers, then retires. So the answers
    # come from the old worker until one comes from its replacement.
    leaked_by_old = 0
    response = server.get("/leak?mb=30")
    while response.headers["X-Pid"] == str(old) and leaked_by_old < 4:
        assert response.status == 200
        leaked_by_old += 1
        assert body_json(response)["leaked"] == leaked_by_old
        response = server.get("/leak?mb=30")
    assert 1 <= leaked_by_old <= 3
    server.wait_log(rf"The work of process {old} is done \(reload-on-rss", 5.0)
    # The replacement answered the last one, as a fresh process without the old leak.
    assert response.status == 200 and response.headers["X-Pid"] != str(old)
    assert body_json(response)["leaked"] == 1
    assert server.pids("worker 1") == [int(response.headers["X-Pid"])]
    wait_for(lambda: proc_state(old) == "", 5.0, what="the old worker to be reaped")


# -- 9. start-up failures ---------------------------------------------------------------------


def _failed_start(server: ServerProcess) -> tuple[int, str]:
    code = server.wait_exit(15)
    return code, server.log_text()


def _lines_with(text: str, *needles: str) -> list[str]:
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def test_bad_ini_value_is_one_clear_line(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    ini = tmp_path / "file.ini"
    ini.write_text("[uwsgi]\nmaster = true\nprocesses = lots\nthreads = 1\n")
    server = muleteer_server(str(ini), app=TESTAPP, ready=False)
    code, text = _failed_start(server)
    assert code != 0
    assert "Traceback" not in text
    assert len(_lines_with(text, "processes", "'lots'", "file.ini:3")) == 1, text
    assert len(text.strip().splitlines()) == 1, text


def test_unknown_option_is_one_clear_line(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--no-such-option", "1", app=TESTAPP, ready=False)
    code, text = _failed_start(server)
    assert code != 0
    assert "Traceback" not in text
    assert len(_lines_with(text, "--no-such-option")) == 1, text
    assert len(text.strip().splitlines()) == 1, text


def test_missing_wsgi_file_is_one_clear_line(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "missing_app.py"
    server = muleteer_server(app=missing, ready=False)
    code, text = _failed_start(server)
    assert code != 0
    assert "Traceback" not in text
    assert len(_lines_with(text, "wsgi-file", str(missing))) == 1, text
    assert "spawned muleteer worker" not in text


def test_app_raising_at_import_exits_22(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    broken = tmp_path / "broken_app.py"
    broken.write_text(BROKEN_APP)
    server = muleteer_server(app=broken, ready=False)
    code, text = _failed_start(server)
    assert code == 22, text
    assert len(_lines_with(text, "broken_app.py", "RuntimeError", "boom at import")) == 1, text
    assert "spawned muleteer worker" not in text


def test_port_in_use_is_one_clear_line(muleteer_server: ServerFactory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        server = muleteer_server(
            "--http-socket", f"127.0.0.1:{port}", app=TESTAPP, listen=False, ready=False
        )
        code, text = _failed_start(server)
    assert code != 0
    assert "Traceback" not in text
    assert len(_lines_with(text, f"127.0.0.1:{port}", "in use")) == 1, text
    assert "spawned muleteer worker" not in text


# -- 10. lazy apps ----------------------------------------------------------------------------


def test_lazy_apps_import_the_app_in_each_worker(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--processes", "2", "--lazy-apps", app=TESTAPP)
    seen: dict[int, dict[str, object]] = {}

    def both() -> bool:
        # Concurrent requests, so that both workers answer some (an idle worker set may
        # hand sequential requests to the same worker every time).
        for outcome in run_load(server.port, concurrency=4, requests=40, duration=10).ok:
            payload = json.loads(outcome.body)
            seen[int(payload["worker"])] = payload
        return len(seen) == 2

    wait_for(both, 10.0, what="answers from both workers")
    assert seen[1]["started"] != seen[2]["started"]
    assert seen[1]["pid"] != seen[2]["pid"]
    # A replacement imports the app again, after it was forked.
    (w1, _w2) = worker_pids(server, 2)
    killed_at = time.time()
    os.kill(w1, signal.SIGKILL)
    seen.clear()

    def new_worker_1() -> bool:
        both()
        return 1 in seen and seen[1]["pid"] != w1

    wait_for(new_worker_1, 10.0, what="an answer from the new worker 1")
    started = seen[1]["started"]
    assert isinstance(started, float) and started > killed_at


def test_lazy_apps_need_app_import_error_stops_the_server(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    broken = tmp_path / "broken_app.py"
    broken.write_text(BROKEN_APP)
    server = muleteer_server(
        "--processes", "2", "--lazy-apps", "--need-app", app=broken, ready=False
    )
    code, text = _failed_start(server)
    assert code == 22, text
    spawned = count_lines(server, r"spawned muleteer worker")
    assert 1 <= spawned <= 4, text
    assert "boom at import" in text


# -- 11. pidfile, vacuum, unix sockets --------------------------------------------------------


def test_pidfile_unix_socket_and_vacuum(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    sock_path = tmp_path / "app.sock"
    pidfile = tmp_path / "app.pid"
    server = muleteer_server(
        "--http-socket",
        str(sock_path),
        "--pidfile",
        str(pidfile),
        "--vacuum",
        app=TESTAPP,
        listen=False,
    )
    assert int(poll_file(pidfile).strip()) == server.pid
    info = os.stat(sock_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    status, headers, _body = split_response(unix_http(sock_path, "/"))
    assert status == 200 and int(headers["x-pid"]) in server.pids("worker")
    assert server.stop() == 0
    assert not sock_path.exists()
    assert not pidfile.exists()


def test_unix_socket_chmod_socket_mode(muleteer_server: ServerFactory, tmp_path: Path) -> None:
    sock_path = tmp_path / "app660.sock"
    server = muleteer_server(
        "--http-socket", str(sock_path), "--chmod-socket=660", app=TESTAPP, listen=False
    )
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
    assert status_of(unix_http(sock_path, "/")) == 200
    assert server.stop() == 0


# -- 12. logto --------------------------------------------------------------------------------


def test_logto_collects_server_lines_and_app_prints(
    muleteer_server: ServerFactory, tmp_path: Path
) -> None:
    app = tmp_path / "printer.py"
    app.write_text(PRINTING_APP)
    logfile = tmp_path / "server.log"
    server = muleteer_server("--logto", str(logfile), app=app, ready=False)
    poll_file(logfile, lambda text: "spawned muleteer worker 1" in text)
    response = wait_for(lambda: try_get(server, "/from-the-test"), 10.0)
    assert response.body == b"ok"
    text = poll_file(logfile, lambda t: "app says hello to /from-the-test" in t)
    assert "printer app imported" in text
    captured = server.log_text()
    assert "spawned muleteer worker" not in captured
    assert "app says hello" not in captured


# -- 13. process titles -----------------------------------------------------------------------


def _pgrep(pattern: str) -> set[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return {int(pid) for pid in out.stdout.split()}


@pytest.mark.parametrize("prefix", ["", "myapp "])
def test_process_titles(muleteer_server: ServerFactory, prefix: str) -> None:
    options = ("--procname-prefix", prefix) if prefix else ()
    server = muleteer_server("--processes", "2", "--mules", "1", *options, app=TESTAPP)
    w1, w2 = worker_pids(server, 2)
    wait_for(lambda: server.pids("mule 1"), 10.0)
    titles = {pid: process_title(pid) for pid in server.children()}
    assert sorted(titles.values()) == [
        f"{prefix}muleteer mule 1",
        f"{prefix}muleteer worker 1",
        f"{prefix}muleteer worker 2",
    ]
    assert process_title(server.pid) == f"{prefix}muleteer master"
    assert titles[w1] == f"{prefix}muleteer worker 1"
    assert titles[w2] == f"{prefix}muleteer worker 2"
    family = set(titles) | {server.pid}
    assert _pgrep(f"^{prefix}muleteer worker") & family == {w1, w2}
    assert _pgrep(f"^{prefix}muleteer master") & family == {server.pid}
    assert _pgrep(f"^{prefix}muleteer mule 1") & family == set(server.pids("mule 1"))


# -- 14. threads ------------------------------------------------------------------------------


def test_threads_run_requests_of_one_worker_in_parallel(muleteer_server: ServerFactory) -> None:
    server = muleteer_server("--processes", "1", "--threads", "4", app=TESTAPP)
    (worker,) = worker_pids(server, 1)
    results: list[Response] = []
    lock = threading.Lock()

    def one() -> None:
        response = server.get("/slow?s=1", timeout=10)
        with lock:
            results.append(response)

    threads = [threading.Thread(target=one) for _ in range(4)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    elapsed = time.monotonic() - start
    print(f"4 x /slow?s=1 on 4 threads: {elapsed:.2f} s")
    assert [r.status for r in results] == [200] * 4
    assert {r.headers["X-Pid"] for r in results} == {str(worker)}
    assert 1.0 <= elapsed < 2.5
    response = server.get("/")
    assert response.status == 200 and response.headers["X-Pid"] == str(worker)
