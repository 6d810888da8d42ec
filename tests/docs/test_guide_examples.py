"""Every fenced code block of the user guide (docs/*.md) is run or checked here.

A block is marked by an HTML comment on the line just before its opening fence:

``<!-- test: harness -->``
    Python, executed in this process. The snippet installs ``muleteer.testing`` itself
    and asserts what it shows; anything it leaves installed is removed afterwards.
``<!-- test: pytest -->``
    a pytest test file, run by pytest in a subprocess (it may use the ``uwsgi_env`` and
    ``muleteer_server`` fixtures); it must pass.
``<!-- test: file NAME -->``
    saved as NAME in the scratch directory of every later block of the same page (a
    later block with the same NAME replaces it); a later block must use it.
``<!-- test: server SCENARIO -->``
    one ``muleteer ...`` command, started for real with the ``muleteer_server`` fixture;
    ``SCENARIOS`` below says what the test then checks (a log line, a file, a response).
``<!-- test: shell SCENARIO -->``
    run with bash (``-e -o pipefail``) while SCENARIO's server runs; must exit 0.
``<!-- test: tty SCENARIO -->``
    an interactive command (``muleteer top``), run in a pseudo-terminal: it must draw its
    screen and exit 0 when it reads ``q``.
``<!-- test: log SCENARIO -->``
    sample log lines: each must match a line of SCENARIO's log (numbers and day and
    month names may differ).
``<!-- test: config [warns|fails] -->``
    INI text, or ``muleteer ...`` command lines (``NAME=value`` prefixes are environment
    variables): each is resolved with ``--print-config`` through the ``muleteer`` entry
    point, which must exit 0 with no warning (``warns``: with a warning; ``fails``: exit
    non-zero).
``<!-- test: skip REASON -->``
    not run; only for what cannot run here (a systemd unit, an nginx or logrotate
    configuration). The reason is required.

Substitutions, applied to the files, commands and shell blocks of a server scenario:
``127.0.0.1:8000`` and ``127.0.0.1:9191`` become free loopback ports, and each scenario
lists its own (shorter timers: ``@timer(30,`` -> ``@timer(1,``; ``/tmp`` -> a scratch
directory), so that no run waits long. ``{dir}`` in a replacement is the scratch
directory.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from muleteer import cli, testing
from muleteer import options as o
from muleteer.compat import uwsgi as uwsgi_compat
from muleteer.pytest_plugin import ServerFactory, ServerProcess, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
KINDS = ("harness", "pytest", "file", "server", "shell", "tty", "log", "config", "skip")
SCENARIO_KINDS = ("shell", "tty", "log")
MARKER = re.compile(r"^<!--\s*test:\s*(\S+)\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


# -- the blocks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    page: str  # "mules.md"
    line: int  # line number of the opening fence
    lang: str
    kind: str  # one of KINDS, or "" when unmarked
    arg: str  # the rest of the marker
    text: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse_page(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: unclosed code block"
        i += 1
        previous = start - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        marker = MARKER.match(lines[previous].strip()) if previous >= 0 else None
        kind, arg = (marker.group(1), marker.group(2)) if marker else ("", "")
        blocks.append(
            Block(path.name, start + 1, opening.group(2), kind, arg, "\n".join(body) + "\n")
        )
    return blocks


PAGES = sorted(DOCS.glob("*.md"))
BLOCKS = [block for page in PAGES for block in parse_page(page)]


def blocks_of(kind: str) -> list[Block]:
    return [block for block in BLOCKS if block.kind == kind]


def files_for(block: Block) -> dict[str, str]:
    """The page's file blocks above `block` (a later one with the same name wins)."""
    files: dict[str, str] = {}
    for other in BLOCKS:
        if other.page == block.page and other.kind == "file" and other.line < block.line:
            files[other.arg] = other.text
    return files


def write_files(block: Block, where: Path, sub: Callable[[str], str] = lambda t: t) -> None:
    for name, text in files_for(block).items():
        target = where / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(sub(text))


KEPT = ("MULETEER_ALLOW_ROOT",)  # set by tests/conftest.py when the suite runs as root


def clean_environ() -> dict[str, str]:
    """This process's environment without muleteer/uWSGI option variables (but KEPT)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UWSGI_", "MULETEER_")) or k in KEPT
    }
    return env | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}


# -- every block is accounted for ------------------------------------------------------------


def test_the_guide_has_blocks_and_every_block_is_marked() -> None:
    assert {p.name for p in PAGES} >= {
        "index.md",
        "mules.md",
        "signals.md",
        "testing.md",
        "operating.md",
        "migrating.md",
        "options.md",
    }
    unmarked = [b.id for b in BLOCKS if b.kind not in KINDS]
    assert not unmarked, f"code blocks without a valid <!-- test: ... --> marker: {unmarked}"
    for block in blocks_of("skip"):
        assert block.arg, f"{block.id}: a skipped block needs a reason"
    for block in blocks_of("config"):
        assert block.arg in ("", "warns", "fails"), block.id
        assert block.lang in ("sh", "ini"), block.id


def test_every_file_block_is_used_by_a_later_block() -> None:
    for block in blocks_of("file"):
        stem = Path(block.arg).stem
        later = [
            b
            for b in BLOCKS
            if b.page == block.page and b.line > block.line and b.kind not in ("skip", "")
        ]
        assert any(stem in b.text for b in later), f"{block.id}: {block.arg} is never used"


def test_every_scenario_block_belongs_to_a_server_with_checks() -> None:
    servers = {(b.page, b.arg) for b in blocks_of("server")}
    assert len(servers) == len(blocks_of("server")), "a scenario is started twice"
    for block in BLOCKS:
        if block.kind in SCENARIO_KINDS:
            assert (block.page, block.arg) in servers, f"{block.id}: no server {block.arg!r}"
    assert {name for _, name in servers} == set(SCENARIOS), "SCENARIOS and the docs differ"


def test_mkdocs_nav_lists_every_page() -> None:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = re.findall(r"^\s+- [^:\n]+: (\S+\.md)\s*$", text, re.MULTILINE)
    assert sorted(nav) == sorted(p.name for p in PAGES)


# -- harness blocks: in this process ---------------------------------------------------------


@pytest.mark.parametrize("block", blocks_of("harness"), ids=lambda b: b.id)
def test_harness_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_files(block, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[testing.Harness] = []
    real_install = testing.install

    def install(*args: Any, **kwargs: Any) -> testing.Harness:
        harness = real_install(*args, **kwargs)
        made.append(harness)
        return harness

    monkeypatch.setattr(testing, "install", install)
    modules_before = set(sys.modules)
    namespace: dict[str, Any] = {"__name__": "__guide__"}
    try:
        exec(compile(block.text, block.id, "exec"), namespace)
        assert made, f"{block.id}: a harness block must call testing.install()"
    finally:
        for harness in reversed(made):
            if sys.modules.get("uwsgi") is harness.module:
                harness.uninstall()
        for name in set(sys.modules) - modules_before:
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if name in ("uwsgi", "uwsgidecorators") or module_file.startswith(str(tmp_path)):
                del sys.modules[name]


# -- pytest blocks: in a subprocess ----------------------------------------------------------


@pytest.mark.parametrize("block", blocks_of("pytest"), ids=lambda b: b.id)
def test_pytest_block(block: Block, tmp_path: Path) -> None:
    write_files(block, tmp_path)
    test_file = tmp_path / f"test_guide_{Path(block.page).stem}_{block.line}.py"
    test_file.write_text(block.text)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout


# -- config blocks: resolved with --print-config ---------------------------------------------


def command_lines(text: str) -> list[str]:
    """Shell lines of a block, with ``\\`` continuations joined and comments dropped."""
    joined = text.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def split_command(line: str) -> tuple[dict[str, str], list[str]]:
    """``A=b muleteer --x`` -> ({"A": "b"}, ["--x"])."""
    words = shlex.split(line, comments=True)
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words and words[0] == "muleteer", f"not a muleteer command: {line!r}"
    return env, words[1:]


def print_config(
    args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """``muleteer ARGS --print-config`` through the console-script entry point."""
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith(("UWSGI_", "MULETEER_"))]:
            m.delenv(key)
        for key, value in env.items():
            m.setenv(key, value)
        out, err = io.StringIO(), io.StringIO()
        m.setattr(sys, "stdout", out)
        m.setattr(sys, "stderr", err)
        code = cli.main([*args, "--print-config"])
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("block", blocks_of("config"), ids=lambda b: b.id)
def test_config_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_files(block, tmp_path)
    monkeypatch.chdir(tmp_path)
    if block.lang == "ini":
        (tmp_path / "guide.ini").write_text(block.text)
        commands = [({}, ["--ini", "guide.ini"])]
    else:
        commands = [split_command(line) for line in command_lines(block.text)]
    assert commands, f"{block.id}: no command"
    for env, args in commands:
        code, output = print_config(args, env, monkeypatch)
        where = f"{block.id}: muleteer {shlex.join(args)}"
        if block.arg == "fails":
            assert code != 0 and output.startswith("muleteer: "), f"{where} did not fail"
            continue
        assert code == 0, f"{where} exited {code}: {output}"
        assert output.startswith("[uwsgi]"), where
        has_warning = "; warning:" in output
        assert has_warning == (block.arg == "warns"), f"{where}: warnings: {output}"
        for key, value in env.items():  # an option's variable shows up as the option
            name = key.split("_", 1)[1].lower().replace("_", "-")
            if o.declared(name) is not None:
                assert f"{name} = {value}" in output, where


def test_config_blocks_mean_what_the_guide_says() -> None:
    """Spot checks of claims made next to config blocks."""
    config = cli.load_config(["--mule=a.py", "--mules=2", "--mule=b.py"], {})
    assert [(m.id, m.program) for m in config.mules] == [
        (1, "a.py"),
        (2, None),
        (3, None),
        (4, "b.py"),
    ]
    config = cli.load_config(["--socket", ":3031", "--mule=jobs.worker:main", "--mules=2"], {})
    assert [m.program for m in config.mules] == ["jobs.worker:main", None, None]


# -- server scenarios ------------------------------------------------------------------------


@dataclass
class Run:
    """One scenario: its scratch directory, its server and its pending blocks."""

    dir: Path
    ports: dict[str, int]
    substitutions: list[tuple[str, str]]
    pending: list[Block]
    env: dict[str, str] = field(default_factory=dict)
    server: ServerProcess | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    log_text: Callable[[], str] | None = None

    def sub(self, text: str) -> str:
        for address, port in self.ports.items():
            text = text.replace(address, f"127.0.0.1:{port}")
        for old, new in self.substitutions:
            text = text.replace(old, new.replace("{dir}", str(self.dir)))
        return text

    @property
    def srv(self) -> ServerProcess:
        assert self.server is not None
        return self.server

    def log(self) -> str:
        return self.log_text() if self.log_text is not None else self.srv.log_text()

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 15.0) -> list[str]:
        regex = re.compile(pattern)

        def found() -> list[str]:
            lines = [line for line in self.log().splitlines() if regex.search(line)]
            return lines if len(lines) >= count else []

        try:
            return list(wait_for(found, timeout, what=f"/{pattern}/ x{count}"))
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log()}") from None

    def next(self, kind: str) -> str:
        """Run the next pending block of the scenario (it must be of `kind`)."""
        assert self.pending, f"no {kind} block left"
        block = self.pending.pop(0)
        assert block.kind == kind, f"{block.id} is a {block.kind} block, expected {kind}"
        if kind == "shell":
            return run_shell(block, self)
        if kind == "tty":
            return run_tty(block, self)
        check_log_sample(block, self)
        return ""


def run_shell(block: Block, run: Run) -> str:
    if "curl " in block.text and shutil.which("curl") is None:
        pytest.skip(f"{block.id} uses curl, which is not installed")
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", run.sub(block.text)],
        cwd=run.dir,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"{block.id} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def run_tty(block: Block, run: Run) -> str:
    """Run the command in a pseudo-terminal, wait for its screen, then press q."""
    (line,) = command_lines(run.sub(block.text))
    env, args = split_command(line)
    master, slave = os.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "muleteer", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=run.dir,
        env={**clean_environ(), "TERM": "xterm", **env},
        start_new_session=True,
    )
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 15
        while not all(word in screen for word in (b"WID", b"MULE", b"signal-only", b"quit")):
            assert time.monotonic() < deadline, f"{block.id}: no screen: {screen!r}"
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                with contextlib.suppress(OSError):
                    screen += os.read(master, 65536)
        os.write(master, b"q")
        assert proc.wait(10) == 0, f"{block.id}: muleteer top did not exit 0"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    return screen.decode(errors="replace")


_NAMES = "Mon|Tue|Wed|Thu|Fri|Sat|Sun|Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"


def sample_pattern(sample: str) -> re.Pattern[str]:
    """A sample log line as a regex: numbers, day and month names may differ."""
    parts = re.split(rf"(\d+|\b(?:{_NAMES})\b)", sample.strip())
    regex = "".join(
        (r"\d+" if part.isdigit() else "[A-Z][a-z]{2}") if index % 2 else re.escape(part)
        for index, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


def check_log_sample(block: Block, run: Run) -> None:
    lines = run.log().splitlines()
    for sample in block.text.splitlines():
        if sample.strip():
            pattern = sample_pattern(sample)
            assert any(pattern.match(line) for line in lines), (
                f"{block.id}: no log line like {sample!r}\n--- log ---\n{run.log()}"
            )


def http_get(port: int, path: str = "/") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: guide\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


@dataclass(frozen=True)
class Scenario:
    check: Callable[[Run], None]
    substitutions: tuple[tuple[str, str], ...] = ()
    prepare: Callable[[Run], None] | None = None
    ready: bool = True


# What each server block of the guide must visibly do. ---------------------------------


def check_quickstart(run: Run) -> None:
    assert re.fullmatch(r"hello from worker [12]\n", run.next("shell"))
    run.wait_log(r"^tick: signal 0 in mule 1$")


def check_seed_signal_only(run: Run) -> None:
    run.wait_log(r"^Hi! I am responding to signal 0, running on mule [12]$", count=2)
    assert run.next("shell") == "ok\n"
    run.wait_log(r"^Greetings! I am running in mule number two\.$")
    run.wait_log(r"^/tmp has been modified\. I am mule 1!$")
    run.wait_log(r"^/tmp has been modified\. I am mule 2!$")


def check_seed_programmed(run: Run) -> None:
    # Not anchored to lines: the program prints from two threads, and print() writes the
    # text and its newline separately, so one line may end inside another.
    run.wait_log(r"Hi! I am loop2\.")
    run.wait_log(r"loop1: Waiting for messages\.\.\. yawn\.")
    assert run.next("shell") == "queued\n"
    run.wait_log(r"b'hello-mule-1'")
    run.wait_log(r"This is a thread!", count=2)
    assert "exited with status" not in run.log()  # mule 1 stays in its loop


def check_mule_respawn(run: Run) -> None:
    run.wait_log(r"^mule 1: my program ends here$", count=3)
    run.wait_log(r"mule 1 \(pid: \d+\) exited with status 30, respawning")
    run.wait_log(r"mule 1 keeps dying at start: respawn in 0\.1 s")
    run.wait_log(r"mule 1 keeps dying at start: respawn in 0\.2 s")
    run.wait_log(r"mule 1 keeps dying at start: respawn in 0\.4 s")


def check_command_cron(run: Run) -> None:
    run.wait_log(r'\[uwsgi-cron\] running "date >> cron\.log" \(pid \d+\)')
    run.wait_log(r'\[uwsgi-cron\] command "date >> cron\.log" running with pid \d+ exited')
    assert re.search(r"\d\d:\d\d:\d\d", (run.dir / "cron.log").read_text())


def check_fs_signal(run: Run) -> None:
    run.next("shell")
    run.wait_log(r"^mule 1: settings\.json changed, reloading it$")
    run.wait_log(r"^mule 2: settings\.json changed, reloading it$")


def check_summary_mule(run: Run) -> None:
    run.wait_log(r"signum 0 registered \(by mule 1, target: mule\)")
    run.wait_log(r"^timed job: signal 0$", count=2)
    run.wait_log(r"^b''$", count=2)  # what signal_wait() returned, printed by the loop
    assert "exited with status" not in run.log()  # the mule stays in signal_wait()


def check_summary_imported(run: Run) -> None:
    run.wait_log(r"signum 0 registered \(by master, target: mule\)")
    run.wait_log(r"^timed job: signal 0$", count=2)
    assert run.srv.get("/").text == "ok\n"  # the import went on: the app is loaded
    assert "b''" not in run.log().splitlines()  # no process looped on signal_wait()


STATS_KEYS = {
    "version",
    "listen_queue",
    "listen_queue_errors",
    "signal_queue",
    "load",
    "pid",
    "uid",
    "gid",
    "cwd",
}
STATS_KEYS |= {"locks", "sockets", "workers", "mules", "farms", "queues", "signals", "timers"}
STATS_KEYS |= {"rb_timers", "crons", "file_monitors", "muleteer"}
MULE_KEYS = {"id", "pid", "status", "signum", "program", "farms", "signals", "signal_queue"}
MULE_KEYS |= {"messages_received", "messages_unhandled", "messages_rejected", "queue"}
MULE_KEYS |= {"respawn_count", "last_spawn", "harakiri_count", "rss", "vsz"}
WORKER_KEYS = {"id", "pid", "accepting", "requests", "delta_requests", "exceptions"}
WORKER_KEYS |= {"harakiri_count", "signals", "signal_queue", "status", "rss", "vsz"}
WORKER_KEYS |= {"running_time", "last_spawn", "respawn_count", "tx", "avg_rt", "apps", "cores"}


def check_stats(run: Run) -> None:
    printed = run.next("shell")
    stats = json.loads((run.dir / "stats.json").read_text())
    assert printed.strip() == str(sorted(stats))
    assert set(stats) == STATS_KEYS
    assert len(stats["workers"]) == 2 and set(stats["workers"][0]) == WORKER_KEYS
    assert len(stats["mules"]) == 1 and set(stats["mules"][0]) == MULE_KEYS
    assert set(stats["muleteer"]) == {"version", "reloads", "phase"}
    assert {q["name"] for q in stats["queues"]} == {"shared", "mule 1"}
    assert set(stats["queues"][0]) == {"name", "sent", "received", "rejected", "depth"}
    assert run.next("shell").startswith('muleteer_mule_spawns_total{mule="1"} 1.0')
    # Every metric the guide names is exposed.
    exposed = fetch_text(f"http://127.0.0.1:{run.ports['127.0.0.1:9191']}/metrics")
    named = set(re.findall(r"`(muleteer_[a-z_]+)`", (DOCS / "operating.md").read_text()))
    assert named and not {n for n in named if f"# TYPE {n} " not in exposed}
    screen = run.next("tty")
    assert "signal-only" in screen


def fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def check_fifo(run: Run) -> None:
    port = run.ports["127.0.0.1:8000"]
    run.next("shell")  # r
    run.wait_log(r"master fifo: 'r' \(graceful reload\)")
    run.wait_log(r"binary reloading muleteer")
    run.wait_log(r"spawned muleteer mule 1", count=2)
    assert http_get(port) == "hello\n"
    run.next("shell")  # m
    run.wait_log(r"master fifo: reloading every mule")
    run.wait_log(r"spawned muleteer mule 1", count=3)
    run.next("shell")  # kill -HUP
    run.wait_log(r"binary reloading muleteer", count=2)
    run.wait_log(r"spawned muleteer mule 1", count=4)
    run.next("shell")  # q
    assert run.srv.wait_exit(15) == 0
    run.wait_log(r"graceful shutdown: stopping workers")
    run.wait_log(r"goodbye to muleteer\.")


def check_touch(run: Run) -> None:
    run.wait_log(r"unable to stat reload\.txt, reload will be triggered")
    run.next("shell")  # touch mules.txt
    run.wait_log(r"mules\.txt has been touched: reloading every mule")
    run.wait_log(r"spawned muleteer mule 1", count=2)
    assert "binary reloading" not in run.log()
    run.next("shell")  # touch reload.txt
    run.wait_log(r"reload\.txt has been touched\.\.\. grace them all")
    run.wait_log(r"binary reloading muleteer")
    run.wait_log(r"spawned muleteer mule 1", count=3)
    assert http_get(run.ports["127.0.0.1:8000"]) == "hello\n"


def prepare_systemd(run: Run) -> None:
    name = f"muleteer-guide-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(15)
    run.extra["notify"] = sock
    run.env["NOTIFY_SOCKET"] = "@" + name  # an abstract socket, as systemd may use


def check_systemd(run: Run) -> None:
    sock: socket.socket = run.extra["notify"]
    with sock:

        def message() -> str:
            return sock.recv(4096).decode()

        first = message()
        assert "READY=1" in first and "STATUS=2 worker(s) and 1 mule(s) up" in first
        run.srv.send_signal(signal.SIGHUP)  # ExecReload
        assert "RELOADING=1" in message()
        assert "READY=1" in message()
        run.srv.send_signal(signal.SIGTERM)  # systemctl stop
        assert "STOPPING=1" in message()
        assert run.srv.wait_exit(15) == 0


def prepare_logs(run: Run) -> None:
    def both() -> str:
        text = ""
        for name in ("app.log.1", "app.log"):
            with contextlib.suppress(FileNotFoundError):
                text += (run.dir / name).read_text()
        return text

    run.log_text = both


def check_logs(run: Run) -> None:
    port = run.ports["127.0.0.1:8000"]
    run.wait_log(r"spawned muleteer mule 1")
    wait_for(lambda: _answers(port), 15, what="the HTTP socket")
    assert http_get(port) == "hello\n"
    run.wait_log(r"GET / => generated 6 bytes")
    run.next("log")
    workers_before = run.srv.pids("worker")
    run.next("shell")  # mv app.log app.log.1; echo l > app.fifo
    rotated = run.dir / "app.log"

    def new_log() -> str:
        return rotated.read_text() if rotated.exists() else ""

    wait_for(lambda: (run.dir / "app.log.1").exists() and rotated.exists(), 15, what="reopen")
    # The worker reopens the file on SIGWINCH; its next request line goes to the new file.
    wait_for(
        lambda: http_get(port) == "hello\n" and "GET / => generated" in new_log(),
        15,
        what="a request line in the new app.log",
    )
    assert run.srv.pids("worker") == workers_before  # nothing was restarted
    assert "master fifo: 'l' (reopen the log file)" in (run.dir / "app.log.1").read_text()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


SHORT_TIMER = (("@timer(30,", "@timer(1,"),)
SCENARIOS: dict[str, Scenario] = {
    "quickstart": Scenario(check_quickstart, (("@timer(10,", "@timer(1,"),)),
    "seed-signal-only": Scenario(
        check_seed_signal_only,
        (*SHORT_TIMER, ("'/tmp'", "'{dir}/watch'"), ("touch /tmp/", "touch {dir}/watch/")),
        prepare=lambda run: (run.dir / "watch").mkdir(),
    ),
    "seed-programmed": Scenario(check_seed_programmed, (("time.sleep(2)", "time.sleep(0.2)"),)),
    "mule-respawn": Scenario(check_mule_respawn),
    "command-cron": Scenario(check_command_cron),
    "fs-signal": Scenario(check_fs_signal),
    "summary-mule": Scenario(check_summary_mule, SHORT_TIMER),
    "summary-imported": Scenario(check_summary_imported, SHORT_TIMER),
    "stats": Scenario(check_stats),
    "fifo": Scenario(check_fifo),
    "touch": Scenario(check_touch),
    "systemd": Scenario(check_systemd, prepare=prepare_systemd),
    "logs": Scenario(check_logs, prepare=prepare_logs, ready=False),
}


@pytest.mark.integration
@pytest.mark.parametrize("block", blocks_of("server"), ids=lambda b: f"{b.page}:{b.arg}")
def test_server_scenario(block: Block, tmp_path: Path, muleteer_server: ServerFactory) -> None:
    scenario = SCENARIOS[block.arg]
    ports = {"127.0.0.1:8000": free_port(), "127.0.0.1:9191": free_port()}
    pending = [
        b
        for b in BLOCKS
        if b.page == block.page and b.kind in SCENARIO_KINDS and b.arg == block.arg
    ]
    run = Run(tmp_path, ports, list(scenario.substitutions), pending)
    if scenario.prepare is not None:
        scenario.prepare(run)
    write_files(block, tmp_path, run.sub)
    (line,) = command_lines(block.text)
    env, args = split_command(run.sub(line))
    uses_http = "127.0.0.1:8000" in "".join(files_for(block).values()) + line
    http = ports["127.0.0.1:8000"] if uses_http else None
    run.server = muleteer_server(
        *args,
        listen=False,
        port=http if scenario.ready else None,
        cwd=tmp_path,
        env={**clean_environ(), **env, **run.env},
        ready=scenario.ready,
    )
    try:
        scenario.check(run)
    finally:
        for value in run.extra.values():
            if isinstance(value, socket.socket):
                value.close()
    assert not run.pending, f"blocks the scenario did not run: {[b.id for b in run.pending]}"


# -- the tables of migrating.md match the code -----------------------------------------------


def table_rows(page: str, heading: str) -> list[list[str]]:
    text = (DOCS / page).read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


STATUSES = ("supported", "supported with a difference", "not supported")


def test_migrating_function_table_matches_the_uwsgi_module() -> None:
    env = testing.install(workers=1, mules=1)
    try:
        import uwsgi

        rows = table_rows("migrating.md", "The `uwsgi` module, function by function")
        assert len(rows) > 40
        listed: set[str] = set()
        for names, status, _notes in rows:
            assert status in STATUSES, names
            for name in re.findall(r"`([a-z_0-9]+)`", names):
                listed.add(name)
                assert hasattr(uwsgi, name) == (status != "not supported"), name
        public = {
            n for n in vars(env.module) if not n.startswith("_") and callable(vars(env.module)[n])
        }
        assert public <= listed, f"functions missing from the table: {public - listed}"
        assert listed >= uwsgi_compat.NOT_IMPLEMENTED
    finally:
        env.uninstall()


def test_migrating_option_table_matches_the_registry() -> None:
    rows = table_rows("migrating.md", "Options")
    assert len(rows) > 30
    for names, status, _notes in rows:
        assert status in STATUSES, names
        for name in re.findall(r"`([a-z0-9-]+)`", names):
            option = o.declared(name)
            if status == "not supported":
                assert option is None and name in o.UWSGI_NOT_IMPLEMENTED, name
            else:
                assert option is not None and option.implemented, name


def test_harness_clock_starts_where_the_guide_says() -> None:
    env = testing.install()
    try:
        assert env.clock.now() == datetime.datetime(2026, 1, 5, 0, 0)
        assert env.clock.now().strftime("%A") == "Monday"
    finally:
        env.uninstall()
