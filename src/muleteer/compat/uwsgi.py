"""The ``uwsgi`` module that applications import, built once per server.

It is a facade over :mod:`muleteer.runtime` and :mod:`muleteer.messaging` with uWSGI 2.0's
Python 3 signatures and types (``bytes`` where uWSGI returns bytes). It is installed as
``sys.modules["uwsgi"]`` only inside the server: outside it, ``import uwsgi`` stays an
ImportError, as under uWSGI. A name muleteer does not implement raises AttributeError
naming it (``hasattr`` stays an honest feature test).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import signal as os_signal
import socket
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

from muleteer import __version__, messaging, runtime
from muleteer import options as o
from muleteer.scoreboard import F, I, Status

NOT_IMPLEMENTED_DOC = "docs/migrating.md lists what is not implemented"

NOT_IMPLEMENTED = frozenset(
    [
        "cache_get",
        "cache_set",
        "cache_update",
        "cache_del",
        "cache_exists",
        "cache_clear",
        "cache_inc",
        "cache_dec",
        "cache_mul",
        "cache_div",
        "cache_num",
        "cache_keys",
        "sharedarea_read",
        "sharedarea_write",
        "queue_get",
        "queue_push",
        "queue_pop",
        "rpc",
        "spool",
        "send_to_spooler",
        "spooler_jobs",
        "spooler_pid",
        "spooler_pids",
        "spooler_get_task",
        "set_spooler_frequency",
        "spooler_dir",
        "sendfile",
        "websocket_handshake",
        "websocket_recv",
        "websocket_send",
        "chunked_read",
        "chunked_read_nb",
        "connection_fd",
        "disconnect",
        "add_var",
        "set_logvar",
        "get_logvar",
        "route",
        "async_sleep",
        "async_connect",
        "suspend",
        "wait_fd_read",
        "wait_fd_write",
        "metric_get",
        "metric_set",
        "metric_inc",
        "metric_dec",
        "alarm",
        "offload",
        "request_context",
        "erlang_register_process",
        "parsefile",
        "embedded_data",
        "extract",
    ]
)


# The runtime of this process (raises outside a server). Bound, not wrapped: every
# ``uwsgi`` call goes through it, mule_get_msg hundreds of thousands of times a second.
_rt = runtime.current


def _signum(num: object) -> int:
    if not isinstance(num, int):
        raise TypeError(f"signal number must be an int, not {type(num).__name__}")
    return num % 256  # uWSGI parses it as an unsigned char: 256 is 0, -1 is 255


def _status_bytes(status: int, signum: int) -> bytes:
    if status == Status.BUSY:
        return b"busy"
    if status == Status.SIGNAL:
        return b"sig%d" % signum
    if status == Status.STOPPING:
        return b"pause"
    return b"idle"


class UwsgiModule(types.ModuleType):
    """Module type whose unknown attributes fail with a message that names them."""

    opt: dict[str, Any]
    numproc: int
    buffer_size: int
    started_on: int
    has_threads: int
    cores: int
    version: bytes
    version_info: tuple[int, int, int, int, bytes]
    hostname: bytes
    magic_table: dict[bytes, bytes]
    SPOOL_OK: int
    SPOOL_RETRY: int
    SPOOL_IGNORE: int
    is_a_reload: bool
    unbit: None
    applications: None
    loop: None
    mule_msg_extra_hooks: list[Callable[[bytes], Any]]
    sockets: list[int]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        detail = "is not implemented by muleteer" if name in NOT_IMPLEMENTED else "does not exist"
        raise AttributeError(f"uwsgi.{name} {detail} ({NOT_IMPLEMENTED_DOC})")


def build(opt: dict[str, Any], workers: int, is_reload: bool, cores: int = 1) -> UwsgiModule:
    module = UwsgiModule("uwsgi", "muleteer's uwsgi API (uWSGI 2.0 compatible)")
    ns: dict[str, Any] = {}

    # -- identity and configuration --------------------------------------------------------
    def masterpid() -> int:
        return _rt().master_pid

    def worker_id() -> int:
        rt = _rt()
        return rt.id if rt.role == "worker" else 0

    def mule_id() -> int:
        rt = _rt()
        return rt.id if rt.role == "mule" else 0

    def i_am_the_spooler() -> None:
        return None

    # -- signals ---------------------------------------------------------------------------
    def signal(num: int, remote: str | None = None) -> None:
        if remote is not None:
            raise NotImplementedError(
                "remote signals (uwsgi.signal(num, node)) are not implemented"
            )
        rt = _rt()
        rt.scoreboard.ints[rt.slot * I.COUNT + I.SIGNALS_RAISED] += 1
        rt.port.raise_signal(_signum(num), rt.name)

    def register_signal(num: int, target: str | bytes, handler: Callable[[int], Any]) -> None:
        text = target.decode() if isinstance(target, bytes) else str(target)
        if len(text) > 63:
            raise ValueError("unable to register signal")
        _rt().register(_signum(num), text, handler)

    def signal_registered(num: int) -> bool | None:
        return True if _signum(num) in _rt().handlers else None

    def signal_wait(num: int | None = None) -> bytes:
        if num is not None and not isinstance(num, int):
            raise TypeError("signal_wait() argument must be an int")
        return _rt().signal_wait(None if num is None else _signum(num))

    def signal_received() -> int:
        return _rt().signal_received()

    def add_timer(num: int, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("unable to add timer: the period must be > 0")
        rt = _rt()
        rt.port.add_timer(_signum(num), float(seconds), rt.name)

    def add_ms_timer(num: int, msecs: int) -> None:
        if msecs <= 0:
            raise ValueError("unable to add ms timer: the period must be > 0")
        rt = _rt()
        rt.port.add_timer(_signum(num), msecs / 1000.0, rt.name)

    def add_rb_timer(num: int, seconds: float, iterations: int = 0) -> None:
        if seconds <= 0:
            raise ValueError("unable to add rb_timer: the period must be > 0")
        rt = _rt()
        rt.port.add_rb_timer(_signum(num), float(seconds), int(iterations), rt.name)

    def add_cron(num: int, minute: int, hour: int, day: int, month: int, weekday: int) -> bool:
        from muleteer.triggers import Cron, TriggerError

        fields = (int(minute), int(hour), int(day), int(month), int(weekday))
        try:
            Cron(_signum(num), *fields)
        except TriggerError as exc:
            raise ValueError(f"unable to add cron: {exc}") from None
        rt = _rt()
        rt.port.add_cron(_signum(num), fields, rt.name)
        return True

    def add_file_monitor(num: int, path: str | bytes) -> None:
        text = os.fsdecode(path)
        rt = _rt()
        rt.port.add_file_monitor(_signum(num), os.path.abspath(text), rt.name)

    # -- mule messages ---------------------------------------------------------------------
    mule_msg = messaging.mule_msg

    def mule_get_msg(
        signals: Any = True, farms: Any = True, buffer_size: int = 65536, timeout: int = -1
    ) -> bytes | None:
        return messaging.mule_get_msg(_rt(), signals, farms, buffer_size, timeout)

    def farm_msg(farm: str | bytes, message: Any) -> bool:
        return messaging.farm_msg(_rt(), farm, message)

    def farm_get_msg() -> bytes | None:
        return messaging.farm_get_msg(_rt())

    def in_farm(name: str | bytes | None = None) -> bool | None:
        return messaging.in_farm(_rt(), name)

    def install_mule_msg_hook(hook: Callable[[bytes], Any]) -> None:
        module.mule_msg_extra_hooks.append(hook)

    def mule_msg_recv_size() -> int:
        return int(_rt().config.get(o.MULE_MSG_RECV_SIZE))

    def mule_file(mule: int | None = None) -> bytes | None:
        rt = _rt()
        if mule is None:
            if rt.role != "mule":
                raise ValueError("mule_file() without an id can only be called in a mule")
            mule = rt.id
        specs = rt.config.mules
        if not 1 <= mule <= len(specs):
            raise ValueError("invalid mule number")
        program = specs[mule - 1].program
        return None if program is None else program.encode()

    # -- harakiri, locks -------------------------------------------------------------------
    def set_user_harakiri(seconds: int) -> None:
        rt = _rt()
        deadline = time.monotonic() + seconds if seconds > 0 else 0.0
        rt.scoreboard.floats[rt.slot * F.COUNT + F.USER_HARAKIRI] = deadline

    def _lock(num: int) -> Any:
        locks = _rt().locks
        if not isinstance(num, int) or not 0 <= num < len(locks):
            raise ValueError("Invalid lock number")
        return locks[num]

    def lock(num: int = 0) -> None:
        _lock(num).acquire()

    def unlock(num: int = 0) -> None:
        _lock(num).release()

    def is_locked(num: int = 0) -> bool:
        handle = _lock(num)
        if handle.acquire(False):
            handle.release()
            return False
        return True

    # -- control and introspection ---------------------------------------------------------
    def reload() -> bool:
        os.kill(_rt().master_pid, os_signal.SIGHUP)
        return True

    def stop() -> bool:
        os.kill(_rt().master_pid, os_signal.SIGQUIT)
        return True

    def workers_() -> tuple[dict[str, Any], ...]:
        rt = _rt()
        sb = rt.scoreboard
        out = []
        for wid in range(1, sb.workers + 1):
            slot = sb.worker_slot(wid)
            get = sb.get
            out.append(
                {
                    "id": wid,
                    "pid": get(slot, I.PID),
                    "requests": get(slot, I.REQUESTS),
                    "delta_requests": get(slot, I.DELTA_REQUESTS),
                    "signals": get(slot, I.SIGNALS),
                    "exceptions": get(slot, I.EXCEPTIONS),
                    "status": _status_bytes(get(slot, I.STATUS), get(slot, I.SIGNUM)),
                    "rss": get(slot, I.RSS),
                    "vsz": get(slot, I.VSZ),
                    "running_time": get(slot, I.RUNNING_TIME),
                    "last_spawn": int(sb.getf(slot, F.LAST_SPAWN)),
                    "respawn_count": get(slot, I.RESPAWNS),
                    "tx": get(slot, I.TX),
                    "avg_rt": get(slot, I.AVG_RT),
                    "apps": (
                        {
                            "id": 0,
                            "modifier1": 0,
                            "mountpoint": b"",
                            "requests": get(slot, I.REQUESTS),
                            "exceptions": get(slot, I.EXCEPTIONS),
                            "chdir": b"",
                        },
                    ),
                }
            )
        return tuple(out)

    def total_requests() -> int:
        sb = _rt().scoreboard
        return sum(sb.get(sb.worker_slot(w), I.REQUESTS) for w in range(1, sb.workers + 1))

    def log(message: str) -> bool:
        sys.stderr.write(f"{message}\n")
        sys.stderr.flush()
        return True

    def setprocname(name: str) -> None:
        import setproctitle

        setproctitle.setproctitle(name)

    def mem() -> tuple[int, int]:
        try:
            with open("/proc/self/statm", "rb") as handle:
                fields = handle.read().split()
            page = os.sysconf("SC_PAGE_SIZE")
            return int(fields[1]) * page, int(fields[0]) * page
        except OSError:
            return 0, 0

    def micros() -> int:
        return time.time_ns() // 1000

    def ready() -> bool:
        return True

    def register_rpc(name: str, func: Callable[..., Any], argc: int = 0) -> bool:
        ns.setdefault("rpc", {})[name] = func
        return True

    def call(name: str | bytes, *args: Any) -> Any:
        key = name.decode() if isinstance(name, bytes) else name
        func = ns.get("rpc", {}).get(key)
        if func is None:
            return None
        return func(*args)

    def rpc_list() -> tuple[bytes, ...]:
        return tuple(k.encode() for k in ns.get("rpc", {}))

    module.workers = workers_  # type: ignore[attr-defined]
    funcs: list[Callable[..., Any]] = [
        masterpid,
        worker_id,
        mule_id,
        i_am_the_spooler,
        signal,
        register_signal,
        signal_registered,
        signal_wait,
        signal_received,
        add_timer,
        add_ms_timer,
        add_rb_timer,
        add_cron,
        add_file_monitor,
        mule_msg,
        mule_get_msg,
        farm_msg,
        farm_get_msg,
        in_farm,
        install_mule_msg_hook,
        mule_msg_recv_size,
        mule_file,
        set_user_harakiri,
        lock,
        unlock,
        is_locked,
        reload,
        stop,
        total_requests,
        log,
        setprocname,
        mem,
        micros,
        ready,
        register_rpc,
        call,
        rpc_list,
    ]
    for func in funcs:
        setattr(module, func.__name__, func)
    module.opt = opt
    module.numproc = workers
    module.buffer_size = 0
    module.started_on = int(time.time())
    module.has_threads = 1
    module.cores = cores
    module.version = ("2.0.31-muleteer-" + __version__).encode()
    module.version_info = (2, 0, 31, 0, b"muleteer")
    module.hostname = socket.gethostname().encode()
    module.magic_table = {}
    module.SPOOL_OK = -2
    module.SPOOL_RETRY = -1
    module.SPOOL_IGNORE = 0
    module.is_a_reload = is_reload
    module.unbit = None
    module.applications = None
    module.loop = None
    module.mule_msg_extra_hooks = []
    module.sockets = []
    return module


class _BundledDecorators(importlib.abc.MetaPathFinder):
    """Provides ``uwsgidecorators`` only when no real one is importable: it sits at the
    end of ``sys.meta_path``, after the finders that would find an installed copy."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "uwsgidecorators":
            return None
        spec = importlib.util.find_spec("muleteer.compat.uwsgidecorators")
        if spec is None or spec.origin is None:
            return None
        return importlib.util.spec_from_file_location("uwsgidecorators", spec.origin)


def install(module: UwsgiModule) -> None:
    """Make ``import uwsgi`` (and, unless a real one exists, ``uwsgidecorators``) work."""
    sys.modules["uwsgi"] = module
    if not any(isinstance(finder, _BundledDecorators) for finder in sys.meta_path):
        sys.meta_path.append(_BundledDecorators())
