"""Server adapters: the only place that knows how to start / probe / stop / classify a server.

An adapter answers four questions for a given Spec (app file, port, N workers, M mules...):
  * command(spec)  -> argv to exec
  * is_ready(spec) -> bool (default: GET / on 127.0.0.1:port answers 200)
  * stop           -> which signal ends it cleanly (we escalate to SIGKILL on *our* process group)
  * classify(run)  -> {pid: role} with roles master / worker / mule / router / ...

Add a new server (e.g. `muleteer`) by subclassing Adapter (or UwsgiLike when its CLI mirrors
uWSGI's) and registering it in ADAPTERS. The generic `cmd:` adapter lets you try a server
without touching code:  --server 'cmd:mysrv --port {port} --workers {workers} {app}'.

Every process is started with start_new_session=True, so its pid is also its process-group id;
stop() only ever signals that pid / that group (processes this harness started).
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .util import APPS_DIR, LOOPBACK, free_port, http_get, pgid_members, proc_cmdline, proc_tree, uwsgi_proto_get

VENV = Path(os.environ.get("BENCH_VENV", os.path.expanduser("~/.cache/muleteer-bench-venv")))
UWSGI_BIN = os.environ.get("UWSGI_BIN", str(VENV / "bin" / "uwsgi"))
GUNICORN_BIN = os.environ.get("GUNICORN_BIN", str(VENV / "bin" / "gunicorn"))
NGINX_BIN = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")


def _default_muleteer_cmd() -> str:
    cand = VENV / "bin" / "muleteer"
    return str(cand) if cand.exists() else "muleteer"


MULETEER_CMD = os.environ.get("MULETEER_CMD") or _default_muleteer_cmd()


class NotSupported(Exception):
    """The adapter cannot run this Spec (e.g. gunicorn has no mules)."""


@dataclass
class Spec:
    app: Path                       # WSGI file
    port: int
    host: str = LOOPBACK
    callable: str = "application"
    workers: int = 2
    threads: int = 1                # per-worker threads (gthread / uwsgi --threads)
    mules: int = 0                  # plain mules (signal targets / mule_get_msg in postfork)
    mule_scripts: list = field(default_factory=list)   # programmed mules: --mule=script.py
    env: dict = field(default_factory=dict)            # extra environment for the server
    extra_args: list = field(default_factory=list)     # appended verbatim to argv
    protocol: str = "http"          # what the listening socket speaks: 'http' or 'uwsgi'
    ready_path: str = "/"


class Running:
    """A started server (possibly several processes trees, e.g. nginx + backend)."""

    def __init__(self, adapter: "Adapter", spec: Spec, logdir: Path):
        self.adapter, self.spec, self.logdir = adapter, spec, logdir
        self.parts: list[tuple[str, subprocess.Popen, Path, "Adapter"]] = []
        self.t_spawn = None

    # -- lifecycle -------------------------------------------------------------------------
    def spawn(self, label: str, argv: list[str], env: dict, adapter: "Adapter") -> subprocess.Popen:
        log = self.logdir / f"{label}.log"
        fh = open(log, "ab")
        t = time.perf_counter()
        try:
            p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **env}, cwd=str(self.logdir), start_new_session=True)
        except (FileNotFoundError, PermissionError) as e:
            self.stop()   # a front's backend may already be running
            raise NotSupported(f"{label}: cannot exec {argv[0]!r} ({e.__class__.__name__})") from e
        finally:
            fh.close()
        if self.t_spawn is None:
            self.t_spawn = t
        self.parts.append((label, p, log, adapter))
        return p

    @property
    def pid(self) -> int:
        return self.parts[0][1].pid

    def alive(self) -> bool:
        return all(p.poll() is None for _, p, _, _ in self.parts)

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.005) -> float:
        """Poll until the adapter says ready. Returns seconds since the first process was spawned."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.adapter.name} exited early; see logs in {self.logdir}:\n"
                                   + self.log_tail())
            try:
                if self.adapter.is_ready(self.spec):
                    return time.perf_counter() - self.t_spawn
            except OSError:
                pass
            time.sleep(interval)
        raise TimeoutError(f"{self.adapter.name} not ready after {timeout}s; logs in {self.logdir}")

    def stop(self, timeout: float = 15.0) -> dict:
        """Stop every part (front first), escalate to SIGKILL on our own process groups."""
        res = {"clean": True, "stop_s": None, "leftover_killed": []}
        t0 = time.perf_counter()
        for label, p, _, ad in reversed(self.parts):
            if p.poll() is None:
                try:
                    os.kill(p.pid, ad.stop_signal)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    res["clean"] = False
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait(5)
            # anything that survived in that process group (orphaned worker...) is ours: kill by pid
            for _ in range(50):
                left = pgid_members(p.pid)
                if not left:
                    break
                time.sleep(0.1)
            for pid in pgid_members(p.pid):
                res["clean"] = False
                res["leftover_killed"].append((label, pid, proc_cmdline(pid)))
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        res["stop_s"] = time.perf_counter() - t0
        return res

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- introspection ---------------------------------------------------------------------
    def log_text(self) -> str:
        out = []
        for label, _, log, _ in self.parts:
            try:
                out.append(f"==> {label} <==\n" + log.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def roles(self) -> list[tuple[int, str]]:
        """[(pid, role)] for every live process of this server, via the adapters' classify()."""
        out = []
        for label, p, log, ad in self.parts:
            prefix = "" if len(self.parts) == 1 else f"{label}:"
            for pid, role in ad.classify(p.pid, log).items():
                out.append((pid, prefix + role))
        return out


class Adapter:
    name = "base"
    supports_mules = False      # mules + uwsgi signal/mule API available to the app
    threaded = False            # True: the bench passes --threads to it (gthread); others get 1
    stop_signal = signal.SIGTERM

    def command(self, spec: Spec) -> list[str]:
        raise NotImplementedError

    def env(self, spec: Spec) -> dict:
        return dict(spec.env)

    def is_ready(self, spec: Spec) -> bool:
        if spec.protocol == "uwsgi":
            status, _ = uwsgi_proto_get(spec.host, spec.port, spec.ready_path, timeout=1.0)
        else:
            status, _ = http_get(spec.host, spec.port, spec.ready_path, timeout=1.0)
        return status == 200

    def check(self, spec: Spec):
        if (spec.mules or spec.mule_scripts) and not self.supports_mules:
            raise NotSupported(f"{self.name} has no mules")

    def start(self, spec: Spec, logdir: Path) -> Running:
        self.check(spec)
        logdir.mkdir(parents=True, exist_ok=True)
        run = Running(self, spec, logdir)
        run.spawn(self.name, self.command(spec), self.env(spec), self)
        return run

    def classify(self, root_pid: int, log: Path) -> dict[int, str]:
        """Default: root is 'master'; children whose cmdline mentions 'mule' are mules, others workers."""
        roles = {}
        for pid in proc_tree(root_pid):
            if pid == root_pid:
                roles[pid] = "master"
            else:
                roles[pid] = "mule" if "mule" in proc_cmdline(pid).lower() else "worker"
        return roles

    def describe(self, spec: Spec) -> str:
        return " ".join(shlex.quote(a) for a in self.command(spec))


# ------------------------------------------------------------------------------ uWSGI family
class UwsgiLike(Adapter):
    """uWSGI-compatible CLI. `binary` is an argv prefix; muleteer reuses this with its own binary."""
    supports_mules = True
    stop_signal = signal.SIGINT     # uWSGI 2.0: INT/QUIT = shutdown; TERM = brutal *reload* unless --die-on-term
    socket_flag = "--http-socket"
    binary: list[str] = [UWSGI_BIN]
    use_virtualenv = True

    def command(self, spec: Spec) -> list[str]:
        flag = "--socket" if spec.protocol == "uwsgi" else self.socket_flag
        argv = list(self.binary) + [
            "--master", "--processes", str(spec.workers),
            flag, f"{spec.host}:{spec.port}",
            "--wsgi-file", str(spec.app), "--callable", spec.callable,
        ]
        for d in dict.fromkeys([str(Path(spec.app).resolve().parent), str(APPS_DIR)]):
            argv += ["--pythonpath", d]
        argv += ["--disable-logging", "--need-app", "--die-on-term"]
        if self.use_virtualenv:
            argv += ["--virtualenv", str(VENV)]
        if spec.threads > 1:
            argv += ["--threads", str(spec.threads)]
        if spec.mules:
            argv += ["--mules", str(spec.mules)]
        for s in spec.mule_scripts:
            argv += [f"--mule={s}"]
        return argv + list(spec.extra_args)

    _spawn_re = re.compile(r"spawned uWSGI (master process|worker \d+|mule \d+) \(pid: (\d+)")

    def classify(self, root_pid: int, log: Path) -> dict[int, str]:
        # uWSGI logs every (re)spawn: "spawned uWSGI worker 1 (pid: 123, cores: 1)"
        # ("mule 1 (pid: 125)"). The last line for a role wins (respawns), then keep live pids only.
        live = set(proc_tree(root_pid))
        roles = {}
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = ""
        for what, pid in self._spawn_re.findall(text):
            pid = int(pid)
            role = "master" if what.startswith("master") else what.replace(" ", "")
            roles = {p: r for p, r in roles.items() if r != role}
            roles[pid] = role
        out = {p: r for p, r in roles.items() if p in live}
        for p in live:  # anything not announced (shouldn't happen)
            out.setdefault(p, "master" if p == root_pid else "unknown")
        return out


class UwsgiHttpSocket(UwsgiLike):
    name = "uwsgi"                      # --http-socket: worker parses HTTP, closes after each response


class UwsgiHttp11Socket(UwsgiLike):
    name = "uwsgi-http11"               # --http11-socket: worker parses HTTP/1.1 and honours keep-alive
    socket_flag = "--http11-socket"


class UwsgiSocket(UwsgiLike):
    name = "uwsgi-socket"               # --socket: uwsgi binary protocol (needs a front, e.g. nginx)

    def check(self, spec):
        super().check(spec)
        if spec.protocol != "uwsgi":
            raise NotSupported("uwsgi-socket only speaks the uwsgi protocol (use nginx-uwsgi)")


class Muleteer(UwsgiLike):
    """muleteer mirrors uWSGI's CLI flags (it is meant as a drop-in). The binary is
    $MULETEER_CMD (shlex-split), default $BENCH_VENV/bin/muleteer or `muleteer` on PATH."""
    name = "muleteer"
    use_virtualenv = False
    _spawn_re = re.compile(r"spawned muleteer (master process|worker \d+|mule \d+) \(pid: (\d+)")

    @property
    def binary(self):  # type: ignore[override]
        return shlex.split(MULETEER_CMD)

    def env(self, spec):
        # The bench may run as root; muleteer refuses root without --uid unless asked.
        return {"MULETEER_ALLOW_ROOT": "1", **spec.env}

    def classify(self, root_pid, log):
        out = super().classify(root_pid, log)
        out[root_pid] = "master"
        return out


# ------------------------------------------------------------------------------ gunicorn
class Gunicorn(Adapter):
    name = "gunicorn-sync"
    worker_class = "sync"
    stop_signal = signal.SIGTERM       # graceful; SIGINT/SIGQUIT = quick

    def command(self, spec: Spec) -> list[str]:
        app = Path(spec.app).resolve()
        argv = [GUNICORN_BIN, "-w", str(spec.workers), "-k", self.worker_class,
                "-b", f"{spec.host}:{spec.port}", "--chdir", str(app.parent),
                "--log-level", "warning"]
        if self.worker_class == "gthread":
            argv += ["--threads", str(max(spec.threads, 1))]
        return argv + list(spec.extra_args) + [f"{app.stem}:{spec.callable}"]

    def env(self, spec):
        return {"PYTHONPATH": str(APPS_DIR), **spec.env}

    def classify(self, root_pid, log):
        return {p: ("master" if p == root_pid else "worker") for p in proc_tree(root_pid)}


class GunicornGthread(Gunicorn):
    name = "gunicorn-gthread"
    worker_class = "gthread"
    threaded = True


# ------------------------------------------------------------------------------ generic command
class CmdTemplate(Adapter):
    """--server 'cmd:TEMPLATE'. Placeholders: {app} {app_dir} {module} {callable} {host} {port}
    {workers} {threads} {mules} {mule_args} (uWSGI style: --mule=a.py ...). Stop signal from
    $BENCH_STOP_SIGNAL (default TERM). Mules are assumed supported if the template has {mules}."""

    def __init__(self, template: str):
        self.template = template
        self.name = "cmd"
        self.supports_mules = "{mules}" in template or "{mule_args}" in template
        self.stop_signal = getattr(signal, "SIG" + os.environ.get("BENCH_STOP_SIGNAL", "TERM"))

    def command(self, spec):
        app = Path(spec.app).resolve()
        s = self.template.format(app=app, app_dir=app.parent, module=app.stem, callable=spec.callable,
                                 host=spec.host, port=spec.port, workers=spec.workers,
                                 threads=spec.threads, mules=spec.mules,
                                 mule_args=" ".join(f"--mule={m}" for m in spec.mule_scripts))
        return shlex.split(s) + list(spec.extra_args)


# ------------------------------------------------------------------------------ nginx front
NGINX_CONF = """\
worker_processes 1;
user root;
daemon off;
error_log {wd}/nginx-error.log warn;
pid {wd}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {wd}/ng_body;
    proxy_temp_path {wd}/ng_proxy;
    fastcgi_temp_path {wd}/ng_fastcgi;
    uwsgi_temp_path {wd}/ng_uwsgi;
    scgi_temp_path {wd}/ng_scgi;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    server {{
        listen {host}:{port} backlog=2048;
        location / {{
{location}
        }}
    }}
}}
"""


class NginxFront(Adapter):
    """nginx (1 worker) on spec.port in front of a backend adapter on another loopback port."""

    def __init__(self, name: str, backend: Adapter, backend_protocol: str):
        self.name, self.backend, self.backend_protocol = name, backend, backend_protocol
        self.supports_mules = backend.supports_mules
        self.stop_signal = signal.SIGQUIT   # nginx graceful shutdown

    def start(self, spec: Spec, logdir: Path) -> Running:
        logdir.mkdir(parents=True, exist_ok=True)
        bspec = replace(spec, port=free_port(spec.host), protocol=self.backend_protocol)
        self.backend.check(bspec)
        run = Running(self, spec, logdir)
        run.spawn(self.backend.name, self.backend.command(bspec), self.backend.env(bspec), self.backend)
        if self.backend_protocol == "uwsgi":
            loc = (f"            include /etc/nginx/uwsgi_params;\n"
                   f"            uwsgi_pass {spec.host}:{bspec.port};")
        else:
            loc = (f"            proxy_set_header Host $host;\n"
                   f"            proxy_pass http://{spec.host}:{bspec.port};")
        conf = logdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(wd=logdir, host=spec.host, port=spec.port, location=loc))
        run.spawn("nginx", [NGINX_BIN, "-p", str(logdir), "-c", str(conf)], {}, self)
        run.backend_spec = bspec
        return run

    def command(self, spec):  # for display only
        bspec = replace(spec, port=0, protocol=self.backend_protocol)
        return ["nginx(1 worker)", "->"] + self.backend.command(bspec)

    def classify(self, root_pid, log):
        return {p: ("master" if p == root_pid else "worker") for p in proc_tree(root_pid)}


ADAPTERS = {
    "uwsgi": UwsgiHttpSocket,
    "uwsgi-http11": UwsgiHttp11Socket,
    "uwsgi-socket": UwsgiSocket,
    "gunicorn-sync": Gunicorn,
    "gunicorn": Gunicorn,
    "gunicorn-gthread": GunicornGthread,
    "nginx-uwsgi": lambda: NginxFront("nginx-uwsgi", UwsgiSocket(), "uwsgi"),
    "nginx-gunicorn": lambda: NginxFront("nginx-gunicorn", Gunicorn(), "http"),
    "muleteer": Muleteer,
    "muleteer-http11": lambda: type("MuleteerHttp11", (Muleteer,),
                                    {"name": "muleteer-http11", "socket_flag": "--http11-socket"})(),
    "nginx-muleteer": lambda: NginxFront("nginx-muleteer", Muleteer(), "uwsgi"),
}


def get_adapter(name: str) -> Adapter:
    if name.startswith("cmd:"):
        return CmdTemplate(name[4:])
    if name not in ADAPTERS:
        raise SystemExit(f"unknown server {name!r}; known: {', '.join(ADAPTERS)} or cmd:TEMPLATE")
    return ADAPTERS[name]()


def server_names(arg: str) -> list[str]:
    """Split a --servers value. cmd: templates contain commas rarely; use ';;' to separate then."""
    sep = ";;" if ";;" in arg else ","
    return [s.strip() for s in arg.split(sep) if s.strip()]
