"""THE option registry: every option is declared here once.

One declaration feeds the command line (``--name``, aliases, one-letter forms), INI keys,
``UWSGI_*``/``MULETEER_*`` environment variables, ``uwsgi.opt``, ``--print-config`` and the
generated ``docs/options.md``. Names, aliases and defaults follow uWSGI 2.0 unless the help
text says otherwise. An option is typed: ``Config.get(PROCESSES)`` is an ``int``.
"""

from __future__ import annotations

import enum
import grp
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Kind(enum.Enum):
    FLAG = "flag"  # no value on the command line; true/false in INI and env
    VALUE = "value"  # exactly one value; the last one wins
    LIST = "list"  # repeatable; every value is kept, in order
    OPTIONAL_LIST = "optional list"  # repeatable, value optional (``--mule`` / ``--mule=x``)
    OPTIONAL_VALUE = "optional value"  # one value, optional (``--chmod-socket[=660]``)


class OptionValueError(ValueError):
    """A value that does not fit its option; the message says what was expected."""


@dataclass(frozen=True, eq=False)
class Option(Generic[T]):
    name: str
    kind: Kind
    default: T
    help: str
    convert: Callable[[str], Any]
    aliases: tuple[str, ...] = ()
    short: str | None = None
    category: str = "core"
    metavar: str = "VALUE"
    implemented: bool = True
    muleteer_only: bool = False

    def __repr__(self) -> str:
        return f"Option({self.name!r})"


REGISTRY: dict[str, Option[Any]] = {}
"""Every declared option by canonical name, in declaration order."""

LOOKUP: dict[str, Option[Any]] = {}
"""Canonical names and aliases (long forms) -> option."""

SHORT: dict[str, Option[Any]] = {}
"""One-letter command-line forms -> option."""


# -- converters: each takes the raw string and returns the typed value or raises ----------


def to_bool(raw: str) -> bool:
    """uWSGI's rule: any value but false/off/no/0 (case-insensitive) is true; empty is true."""
    return raw.strip().lower() not in ("false", "off", "no", "0")


def _text(raw: str) -> str:
    return raw


def _nonempty(raw: str) -> str:
    if not raw.strip():
        raise OptionValueError("expected a non-empty value")
    return raw.strip()


def _int(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise OptionValueError("expected an integer") from None
        if minimum is not None and value < minimum:
            raise OptionValueError(f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise OptionValueError(f"must be <= {maximum}")
        return value

    return convert


def _float(minimum: float = 0.0) -> Callable[[str], float]:
    def convert(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise OptionValueError("expected a number") from None
        if value < minimum:
            raise OptionValueError(f"must be >= {minimum:g}")
        return value

    return convert


def _mode(raw: str) -> int:
    """``chmod-socket``: octal digits; bare (``--chmod-socket``) means 666 as in uWSGI."""
    text = raw.strip() or "666"
    try:
        value = int(text, 8)
    except ValueError:
        raise OptionValueError("expected an octal mode such as 660") from None
    if not 0 <= value <= 0o777:
        raise OptionValueError("expected an octal mode between 000 and 777")
    return value


def _uid(raw: str) -> int:
    text = raw.strip()
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise OptionValueError(f"no such user {text!r}") from None


def _gid(raw: str) -> int:
    text = raw.strip()
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise OptionValueError(f"no such group {text!r}") from None


def _key_value(raw: str) -> str:
    if "=" not in raw or not raw.split("=", 1)[0].strip():
        raise OptionValueError("expected KEY=VALUE")
    return raw


def _declare(option: Option[T]) -> Option[T]:
    for name in (option.name, *option.aliases):
        if name in LOOKUP:
            raise RuntimeError(f"option name {name!r} declared twice")
        LOOKUP[name] = option
    if option.short:
        SHORT[option.short] = option
    REGISTRY[option.name] = option
    return option


def flag(name: str, help: str, **kw: Any) -> Option[bool]:
    return _declare(Option(name, Kind.FLAG, False, help, to_bool, metavar="", **kw))


def value(name: str, default: T, help: str, convert: Callable[[str], T], **kw: Any) -> Option[T]:
    return _declare(Option(name, Kind.VALUE, default, help, convert, **kw))


def optional(name: str, help: str, convert: Callable[[str], T], **kw: Any) -> Option[T | None]:
    """A value option whose default is "not set" (None)."""
    return _declare(Option(name, Kind.VALUE, None, help, convert, **kw))


def many(
    name: str, help: str, convert: Callable[[str], str] = _nonempty, **kw: Any
) -> Option[tuple[str, ...]]:
    return _declare(Option(name, Kind.LIST, (), help, convert, **kw))


# -- configuration files and meta options --------------------------------------------------

INI = many(
    "ini",
    "load options from an INI file (`file.ini` or `file.ini:section`)",
    category="config",
    metavar="FILE[:SECTION]",
)
SET = many(
    "set",
    "set an option or a placeholder: `--set key=value`",
    _key_value,
    category="config",
    metavar="KEY=VALUE",
)
SET_PLACEHOLDER = many(
    "set-placeholder",
    "define a placeholder for `%(name)` expansion only",
    _key_value,
    aliases=("set-ph",),
    category="config",
    metavar="KEY=VALUE",
)
STRICT = flag(
    "strict",
    "accepted for compatibility: muleteer always refuses unknown options",
    category="config",
)
PRINT_CONFIG = flag(
    "print-config",
    "print the resolved options with their sources and exit",
    category="config",
    muleteer_only=True,
)

# -- listeners ------------------------------------------------------------------------------

SOCKET = many(
    "socket",
    "bind a uwsgi-protocol socket (`host:port`, `:port` or a unix path)",
    aliases=("uwsgi-socket",),
    short="s",
    category="sockets",
    metavar="ADDR",
)
HTTP_SOCKET = many(
    "http-socket",
    "bind an HTTP/1.1 socket served by the workers themselves",
    category="sockets",
    metavar="ADDR",
)
HTTP = many(
    "http",
    "same as `http-socket` in muleteer (there is no separate HTTP router "
    "process; the workers parse HTTP/1.1 with keep-alive themselves)",
    category="sockets",
    metavar="ADDR",
)
LISTEN = value(
    "listen",
    100,
    "listen queue (backlog) of every socket",
    _int(1),
    short="l",
    category="sockets",
    metavar="N",
)
CHMOD_SOCKET: Option[int | None] = _declare(
    Option(
        "chmod-socket",
        Kind.OPTIONAL_VALUE,
        None,
        "mode of unix sockets (octal; bare `--chmod-socket` = 666 as in uWSGI). Without "
        "it unix sockets are created 0600 (owner only)",
        _mode,
        category="sockets",
        metavar="[MODE]",
    )
)
UMASK = optional("umask", "process umask (octal)", _mode, category="sockets", metavar="MASK")
VACUUM = flag("vacuum", "remove unix sockets and the pidfile on exit", category="sockets")
UWSGI_ALLOW_IPS = value(
    "uwsgi-allow-ips",
    "127.0.0.1,::1",
    "comma-separated peers allowed on "
    "TCP uwsgi-protocol sockets (`*` = any); the uwsgi protocol lets the "
    "peer set any environ variable, so it is private by default",
    _text,
    category="sockets",
    metavar="IPS",
    muleteer_only=True,
)
FORWARDED_ALLOW_IPS = value(
    "forwarded-allow-ips",
    "127.0.0.1,::1",
    "comma-separated peers "
    "whose X-Forwarded-*/Forwarded headers are passed to the app "
    "(`*` = any); from other peers they are removed",
    _text,
    category="sockets",
    metavar="IPS",
    muleteer_only=True,
)

# -- the application ---------------------------------------------------------------------------

WSGI_FILE = value(
    "wsgi-file",
    None,
    "load a WSGI application from a Python file",
    _nonempty,
    aliases=("file",),
    category="app",
    metavar="FILE",
)
MODULE = value(
    "module",
    None,
    "load a WSGI application from a module (`pkg.mod` or `pkg.mod:callable`)",
    _nonempty,
    aliases=("wsgi",),
    short="w",
    category="app",
    metavar="MODULE",
)
CALLABLE = value(
    "callable",
    "application",
    "name of the WSGI callable",
    _nonempty,
    category="app",
    metavar="NAME",
)
CHDIR = value(
    "chdir",
    None,
    "chdir to this directory before loading the app",
    _nonempty,
    category="app",
    metavar="DIR",
)
PYTHONPATH = many(
    "pythonpath",
    "add a directory to sys.path",
    aliases=("python-path", "pp"),
    category="app",
    metavar="DIR",
)
VIRTUALENV = value(
    "virtualenv",
    None,
    "add the site-packages of this virtualenv to sys.path",
    _nonempty,
    aliases=("venv", "home", "pyhome"),
    short="H",
    category="app",
    metavar="DIR",
)
ENV = many(
    "env",
    "set an environment variable before loading the app",
    _key_value,
    category="app",
    metavar="KEY=VALUE",
)
IMPORT = many(
    "import",
    "import a module after loading the app (in the master, or in every worker with lazy-apps)",
    aliases=("python-import", "py-import", "pyimport"),
    category="app",
    metavar="MODULE",
)
SHARED_IMPORT = many(
    "shared-import",
    "import a module in the master, even with lazy-apps",
    aliases=("shared-python-import", "shared-py-import", "shared-pyimport"),
    category="app",
    metavar="MODULE",
)
LAZY_APPS = flag(
    "lazy-apps", "load the app in each worker after fork instead of in the master", category="app"
)
NEED_APP = flag("need-app", "exit if no application can be loaded", category="app")
PLUGINS = many(
    "plugins",
    "accepted and ignored: the Python support is built in",
    _text,
    aliases=("plugin",),
    category="app",
    metavar="NAMES",
)
ENABLE_THREADS = flag(
    "enable-threads",
    "accepted for compatibility: Python threads are always enabled",
    category="app",
)
PY_CALL_OSAFTERFORK = flag(
    "py-call-osafterfork",
    "accepted for compatibility: os.register_at_fork hooks always run after fork",
    category="app",
)

# -- processes --------------------------------------------------------------------------------

MASTER = flag(
    "master",
    "accepted for compatibility: muleteer always runs a master (`master = false` only warns)",
    short="M",
    category="processes",
)
PROCESSES = value(
    "processes",
    1,
    "number of worker processes",
    _int(1, 1024),
    aliases=("workers",),
    short="p",
    category="processes",
    metavar="N",
)
THREADS = value(
    "threads", 1, "request threads per worker", _int(1, 1024), category="processes", metavar="N"
)
DIE_ON_TERM = flag(
    "die-on-term",
    "SIGTERM shuts the server down (without it SIGTERM is a brutal reload, as in uWSGI 2.0)",
    category="processes",
)
EXIT_ON_RELOAD = flag(
    "exit-on-reload", "exit instead of re-executing on reload", category="processes"
)
CHECK_INTERVAL = value(
    "check-interval",
    1,
    "seconds between the master's periodic checks",
    _int(1),
    category="processes",
    metavar="S",
)
FORKBOMB_DELAY = value(
    "forkbomb-delay",
    10,
    "longest back-off (seconds) between respawns of a worker or mule that keeps dying at "
    "start: 0.1 s, 0.2 s, ... up to this, as a deadline of the master's loop (uWSGI's "
    "default is 2, and it sleeps the whole master)",
    _int(0),
    category="processes",
    metavar="S",
)
MIN_WORKER_LIFETIME = value(
    "min-worker-lifetime",
    10,
    "seconds a worker must live before max-requests or reload-on-rss may recycle it",
    _int(0),
    category="processes",
    metavar="S",
)
WORKER_RELOAD_MERCY = value(
    "worker-reload-mercy",
    60,
    "seconds a stopping worker may take before it is killed",
    _int(0),
    aliases=("reload-mercy",),
    category="processes",
    metavar="S",
)
PIDFILE = value(
    "pidfile",
    None,
    "write the master's pid to this file",
    _nonempty,
    category="processes",
    metavar="FILE",
)
UID = value(
    "uid",
    None,
    "drop privileges to this user (name or number) after binding",
    _uid,
    category="security",
    metavar="USER",
)
GID = value(
    "gid",
    None,
    "drop privileges to this group (name or number) after binding",
    _gid,
    category="security",
    metavar="GROUP",
)
ALLOW_ROOT = flag(
    "allow-root",
    "run as root without `uid` (refused otherwise; uWSGI only warns)",
    category="security",
    muleteer_only=True,
)
PROCNAME_PREFIX = value(
    "procname-prefix",
    "",
    "prefix of every process title",
    _text,
    category="processes",
    metavar="TEXT",
)
AUTO_PROCNAME = flag(
    "auto-procname",
    'accepted for compatibility: titles such as "muleteer worker 1" are always set',
    category="processes",
)

# -- requests ---------------------------------------------------------------------------------

BUFFER_SIZE = value(
    "buffer-size",
    4096,
    "largest request head (HTTP request line and headers, or uwsgi vars block) accepted",
    _int(512, 65535),
    short="b",
    category="requests",
    metavar="BYTES",
)
POST_BUFFERING = value(
    "post-buffering",
    0,
    "request bodies up to this size are kept in "
    "memory, larger ones in a temporary file (0 = 1 MiB)",
    _int(0),
    category="requests",
    metavar="BYTES",
)
LIMIT_POST = value(
    "limit-post",
    1 << 30,
    "largest request body accepted (413 above it, "
    "before the body is read; 0 = unlimited). uWSGI's default is unlimited",
    _int(0),
    category="requests",
    metavar="BYTES",
)
SOCKET_TIMEOUT = value(
    "socket-timeout",
    4,
    "seconds a client may take to send the next "
    "chunk of its body or to read the response; also the keep-alive idle "
    "timeout",
    _int(1),
    category="requests",
    metavar="S",
)
HEADER_TIMEOUT = value(
    "http-header-timeout",
    10,
    "seconds from a request's first byte to the end of its head; slower clients are closed",
    _int(1),
    category="requests",
    metavar="S",
    muleteer_only=True,
)
HARAKIRI = value(
    "harakiri",
    0,
    "kill and replace a worker whose request runs longer than this (seconds; 0 = off)",
    _int(0),
    short="t",
    category="requests",
    metavar="S",
)
MAX_REQUESTS = value(
    "max-requests",
    0,
    "recycle a worker after this many requests (0 = off); workers take turns, at most "
    "one recycle every 0.2 s, so capacity stays up",
    _int(0),
    short="R",
    category="requests",
    metavar="N",
)
MAX_REQUESTS_DELTA = value(
    "max-requests-delta",
    0,
    "worker N recycles after max-requests + "
    "(N-1) * delta requests, so workers do not recycle together",
    _int(0),
    category="requests",
    metavar="N",
)
RELOAD_ON_RSS = value(
    "reload-on-rss",
    0,
    "recycle a worker whose RSS exceeds this many MiB after a request (0 = off)",
    _int(0),
    category="requests",
    metavar="MB",
)
DISABLE_LOGGING = flag("disable-logging", "do not log requests", short="L", category="logging")
LOGTO = value(
    "logto",
    None,
    "log to this file (stdout and stderr of every process included)",
    _nonempty,
    category="logging",
    metavar="FILE",
)

# -- mules and farms (issue: mules) -----------------------------------------------------------

MULE = _declare(
    Option(
        "mule",
        Kind.OPTIONAL_LIST,
        (),
        "add a mule: `--mule` (signal-only), "
        "`--mule=script.py` (runs as __main__) or `--mule=pkg.mod:func`",
        _text,
        category="mules",
        metavar="[PROGRAM]",
    )
)
MULES: Option[tuple[int, ...]] = _declare(
    Option(
        "mules",
        Kind.LIST,
        (),
        "add N signal-only mules",
        _int(0, 1024),
        category="mules",
        metavar="N",
    )
)
FARM = many("farm", "group mules: `name:1,2`", category="mules", metavar="NAME:IDS")
MULE_MSG_SIZE = value(
    "mule-msg-size",
    0,
    "socket buffer (bytes) of every mule and farm message queue (0 = kernel default)",
    _int(0),
    category="mules",
    metavar="BYTES",
)
MULE_MSG_RECV_SIZE = value(
    "mule-msg-recv-size",
    65536,
    "largest mule message; bigger ones are refused at send",
    _int(1),
    category="mules",
    metavar="BYTES",
)
MULE_HARAKIRI = value(
    "mule-harakiri",
    0,
    "kill a mule whose signal handler runs longer than this (seconds; 0 = off)",
    _int(0),
    category="mules",
    metavar="S",
)
MULE_RELOAD_MERCY = value(
    "mule-reload-mercy",
    60,
    "seconds a stopping mule may take before it is killed",
    _int(0),
    category="mules",
    metavar="S",
)
TOUCH_MULES_RELOAD = many(
    "touch-mules-reload",
    "reload every mule when FILE's mtime changes",
    category="mules",
    metavar="FILE",
)

# -- signals, timers, cron, file monitors (issue: signals) ------------------------------------

SIGNAL_BUFSIZE = value(
    "signal-bufsize",
    0,
    "socket buffer (bytes) of signal channels (0 = kernel default)",
    _int(0),
    aliases=("signals-bufsize",),
    category="signals",
    metavar="BYTES",
)
TIMER = many(
    "timer",
    "raise signal NUM every SECS seconds: `NUM SECS`",
    aliases=("signal-timer",),
    category="signals",
    metavar="NUM SECS",
)
RBTIMER = many(
    "rbtimer",
    "like timer, re-armed after each firing: `NUM SECS`",
    aliases=("signal-rbtimer",),
    category="signals",
    metavar="NUM SECS",
)
CRON = many(
    "cron",
    "run a command: `MIN HOUR DAY MONTH WEEKDAY COMMAND`",
    category="signals",
    metavar="SPEC",
)
CRON2 = many(
    "cron2", "run a command: `minute=0,hour=3,unique=1 COMMAND`", category="signals", metavar="SPEC"
)
UNIQUE_CRON = many(
    "unique-cron",
    "like cron, skipped while the previous run is alive",
    category="signals",
    metavar="SPEC",
)
CRON_HARAKIRI = value(
    "cron-harakiri",
    0,
    "kill command crons running longer than this (seconds; 0 = off)",
    _int(0),
    category="signals",
    metavar="S",
)
TOUCH_RELOAD = many(
    "touch-reload",
    "gracefully reload when FILE's mtime changes",
    category="signals",
    metavar="FILE",
)
TOUCH_SIGNAL = many(
    "touch-signal",
    "raise NUM when FILE's mtime changes: `FILE NUM`",
    category="signals",
    metavar="FILE NUM",
)
FS_RELOAD = many(
    "fs-reload", "gracefully reload when PATH changes (inotify)", category="signals", metavar="PATH"
)
FS_SIGNAL = many(
    "fs-signal",
    "raise NUM when PATH changes (inotify): `PATH NUM`",
    category="signals",
    metavar="PATH NUM",
)
LOCKS = value(
    "locks",
    0,
    "number of extra user locks (uwsgi.lock(1..N))",
    _int(0, 1024),
    category="signals",
    metavar="N",
)

# -- observability and control (issue: observability) ----------------------------------------

STATS = value(
    "stats",
    None,
    "serve the stats JSON on ADDR (`host:port` or a unix path)",
    _nonempty,
    aliases=("stats-server",),
    category="stats",
    metavar="ADDR",
)
STATS_HTTP = flag("stats-http", "serve the stats over HTTP (and /metrics)", category="stats")
STATS_MINIFIED = flag(
    "stats-minified",
    "minified stats JSON",
    aliases=("stats-min",),
    category="stats",
)
STATS_ALLOW_PUBLIC = flag(
    "stats-allow-public",
    "allow a stats address that is not loopback",
    category="stats",
    muleteer_only=True,
)
MASTER_FIFO = many(
    "master-fifo",
    "control the master through a FIFO of one-letter commands",
    category="stats",
    metavar="PATH",
)
TOUCH_WORKERS_RELOAD = many(
    "touch-workers-reload",
    "reload the workers when FILE's mtime changes",
    category="stats",
    metavar="FILE",
)
TOUCH_CHAIN_RELOAD = many(
    "touch-chain-reload",
    "chain-reload the workers when FILE's mtime changes",
    category="stats",
    metavar="FILE",
)


UWSGI_NOT_IMPLEMENTED: frozenset[str] = frozenset(
    [
        "add-header",
        "alarm",
        "alarm-backlog",
        "attach-daemon",
        "attach-daemon2",
        "auto-snapshot",
        "buffer-size-limit",
        "cache",
        "cache2",
        "cache-blocksize",
        "cache-store",
        "carbon",
        "cgi-mode",
        "cheap",
        "cheaper",
        "cheaper-algo",
        "cheaper-initial",
        "cheaper-overload",
        "cheaper-step",
        "check-static",
        "chmod-socket-group",
        "chown-socket",
        "close-on-exec",
        "close-on-exec2",
        "cpu-affinity",
        "cron-legion",
        "daemonize",
        "daemonize2",
        "declare-option",
        "disable-write-exception",
        "dynamic-apps",
        "emperor",
        "emperor-on-demand-directory",
        "emperor-tyrant",
        "enable-proxy-protocol",
        "evil-reload-on-as",
        "evil-reload-on-rss",
        "exec-as-root",
        "exec-as-user",
        "exec-post-app",
        "exec-pre-app",
        "fastcgi-socket",
        "fs-brutal-reload",
        "gevent",
        "gevent-monkey-patch",
        "harakiri-graceful-signal",
        "harakiri-graceful-timeout",
        "harakiri-verbose",
        "hook-accepting",
        "hook-as-mule",
        "hook-as-root",
        "hook-as-user",
        "hook-master-start",
        "hook-post-app",
        "hook-post-fork",
        "hook-pre-app",
        "http-auto-chunked",
        "http-keepalive",
        "http-modifier1",
        "http-timeout",
        "http-to",
        "http-websockets",
        "http11-socket",
        "https",
        "https-socket",
        "idle",
        "ignore-sigpipe",
        "ignore-write-errors",
        "immediate-gid",
        "immediate-uid",
        "kill-on-idle",
        "lazy",
        "legion",
        "limit-as",
        "log-4xx",
        "log-5xx",
        "log-date",
        "log-format",
        "log-master",
        "log-maxsize",
        "log-micros",
        "log-reopen",
        "log-slow",
        "log-x-forwarded-for",
        "logdate",
        "logformat",
        "logger",
        "logger-req",
        "logfile-chmod",
        "logfile-chown",
        "master-as-root",
        "max-fd",
        "max-worker-lifetime",
        "max-worker-lifetime-delta",
        "memory-report",
        "metrics-dir",
        "mount",
        "no-default-app",
        "no-orphans",
        "offload-threads",
        "optimize",
        "paste",
        "perl",
        "php",
        "procname",
        "procname-append",
        "procname-master",
        "py-autoreload",
        "py-tracebacker",
        "python-autoreload",
        "queue",
        "queue-blocksize",
        "reaper",
        "reload-on-as",
        "reload-on-uss",
        "reload-on-pss",
        "req-logger",
        "route",
        "route-host",
        "route-run",
        "route-uri",
        "rpc-max",
        "scgi-socket",
        "sharedarea",
        "single-interpreter",
        "skip-atexit",
        "snmp",
        "so-keepalive",
        "spooler",
        "spooler-chdir",
        "spooler-frequency",
        "spooler-harakiri",
        "spooler-import",
        "spooler-processes",
        "ssl-socket",
        "static-expires",
        "static-index",
        "static-map",
        "static-safe",
        "stats-no-cores",
        "subscribe-to",
        "subscription-server",
        "tcp-nodelay",
        "thunder-lock",
        "touch-logreopen",
        "touch-spoolers-reload",
        "unique-legion-cron",
        "unix-signal",
        "vassal-set",
        "wsgi-env-behavior",
        "wsgi-disable-file-wrapper",
        "worker-exec",
        "zerg",
        "zerg-server",
    ]
)
"""uWSGI options muleteer knows about but does not implement: accepted with a warning that
names them (never silently ignored, never a start-up failure)."""


def declared(name: str) -> Option[Any] | None:
    """The option called `name` (canonical name or alias), or None."""
    return LOOKUP.get(name)
