"""muleteer's own ``uwsgidecorators``: the decorator layer over the ``uwsgi`` module.

The server installs this module as ``sys.modules["uwsgidecorators"]`` (only when no real
``uwsgidecorators`` is importable) in processes whose ``sys.modules["uwsgi"]`` already holds
muleteer's ``uwsgi`` module. Importing it:

* raises ``Exception("you have to enable the uWSGI master process to use this module")``
  when ``uwsgi.masterpid() == 0``;
* sets ``uwsgi.post_fork_hook`` to :func:`postfork_chain_hook` and ``uwsgi.spooler`` to
  :func:`manage_spool_request`;
* installs :func:`mule_msg_dispatcher` with ``uwsgi.install_mule_msg_hook`` when the
  ``uwsgi`` module has it, else by assigning ``uwsgi.mule_msg_hook``.

The decorators behave as uWSGI 2.0/2.1's ``uwsgidecorators`` (see
``research/uwsgi-behaviour.md`` section 5.2), with these deliberate differences:

1. ``@mulefunc`` calls are never lost silently. The call is sent with
   ``uwsgi.mule_msg(payload, target, block=True, timeout=MULEFUNC_TIMEOUT)`` (30 s by
   default), i.e. it waits for room in a full mule queue; if the message still cannot be
   sent, ``RuntimeError`` naming the target is raised. When the ``uwsgi`` module's
   ``mule_msg`` takes no ``block``/``timeout`` keywords, the plain call is used and a
   ``False`` result raises ``RuntimeError``. (uWSGI discards the result: a full queue loses
   the call.)
2. ``@mulefunc('farm')`` passes the farm name as ``str``; muleteer's ``mule_msg`` accepts
   ``str`` and ``bytes`` farm names (on Python 3, uWSGI rejects a ``str`` farm name).
3. :func:`mule_msg_dispatcher` never fails silently and never crashes the mule: a message
   that is not a mulefunc call (not a pickle, not a dict, another ``service``) is logged
   at warning level with its size and ignored; an unknown function name is logged with
   the name; an exception raised by the function is logged with its traceback and does
   not propagate.
4. ``@farm()`` / ``@farm(None)`` / bare ``@farm`` mean "any farm": the loop runs in every
   mule that belongs to at least one farm (``uwsgi.in_farm()`` without an argument).
   uWSGI raises ``TypeError`` in every mule for ``@farm()`` and silently registers
   nothing for a bare ``@farm``.
5. ``@harakiri(secs)`` disarms the deadline in a ``finally`` block, so it is also disarmed
   when the function raises (uWSGI leaves it armed).
6. ``mule_functions`` is keyed by ``f"{f.__module__}.{f.__qualname__}"`` (and the payload's
   ``func`` field carries that key), so two modules' ``send()`` functions do not collide.
   uWSGI keys by the bare ``__name__``. (``spooler_functions`` keeps uWSGI's bare-name key,
   because spool files carry it.)
7. ``@mule``, ``@muleloop`` and ``@mulemsg`` raise ``TypeError`` at decoration time when
   they are not given an ``int`` mule id (uWSGI silently never runs such a function).
8. In ``@mule`` / ``@muleloop``, a ``SystemExit`` raised by the function keeps its own exit
   status; other exceptions go to ``sys.excepthook`` and the mule exits with status 1, as in
   uWSGI (which also turns ``sys.exit(0)`` into status 1).
9. ``@lock`` logs a warning when the decorated function is skipped in the spooler.
10. :func:`manage_spool_request` leaves a value that is not valid UTF-8 as ``bytes``
    instead of failing the task.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pickle
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, Protocol, TypeVar, overload

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: The ``uwsgi`` module (muleteer's facade, or a stand-in in tests); its API is dynamic.
uwsgi: Any = importlib.import_module("uwsgi")

if uwsgi.masterpid() == 0:
    raise Exception("you have to enable the uWSGI master process to use this module")

__all__ = [
    "MULEFUNC_TIMEOUT",
    "cron",
    "erlang",
    "farm",
    "filemon",
    "get_free_signal",
    "harakiri",
    "lock",
    "manage_spool_request",
    "mstimer",
    "mule",
    "mule_functions",
    "mule_msg_dispatcher",
    "mulefunc",
    "muleloop",
    "mulemsg",
    "postfork",
    "postfork_chain",
    "postfork_chain_hook",
    "rbtimer",
    "rpc",
    "signal",
    "spool",
    "spooler_functions",
    "spoolforever",
    "spoolraw",
    "thread",
    "timer",
]

#: Seconds a ``@mulefunc`` call waits for room in a full mule queue (read at call time).
MULEFUNC_TIMEOUT: float = 30.0

#: Service tag that marks a mule message as a ``@mulefunc`` call.
MULEFUNC_SERVICE = "uwsgi_mulefunc"

#: Highest uWSGI signal number plus one.
_SIGNAL_COUNT = 256

spooler_functions: dict[str, Callable[..., Any]] = {}
mule_functions: dict[str, Callable[..., Any]] = {}
postfork_chain: list[Callable[[], object]] = []

_Target = int | str | bytes
_Handler = TypeVar("_Handler", bound=Callable[[int], object])


class _SignalDecorator(Protocol):
    """What ``@signal(...)``, ``@timer(...)`` etc. return: registers and returns ``f``."""

    def __call__(self, f: _Handler, /) -> _Handler: ...


# --- post-fork chain ----------------------------------------------------------------------


def postfork_chain_hook() -> None:
    """Run every post-fork entry in registration order (installed as the post-fork hook).

    As in uWSGI, an exception leaves this function and skips the later entries.
    """
    for entry in list(postfork_chain):
        entry()


class _PostforkEntry:
    """A ``@postfork`` function, optionally restricted to one worker id."""

    def __init__(self, f: Callable[[], object], wid: int) -> None:
        functools.update_wrapper(self, f)
        self.f = f
        self.wid = wid

    def __call__(self, *args: object, **kwargs: object) -> object:
        # Arguments are accepted and ignored, as uWSGI does.
        if self.wid > 0 and self.wid != uwsgi.worker_id():
            return None
        return self.f()

    def __repr__(self) -> str:
        return f"<postfork {self.f.__qualname__} wid={self.wid}>"


@overload
def postfork(f_or_wid: Callable[[], object], /) -> _PostforkEntry: ...
@overload
def postfork(f_or_wid: int, /) -> Callable[[Callable[[], object]], None]: ...
def postfork(
    f_or_wid: Callable[[], object] | int, /
) -> _PostforkEntry | Callable[[Callable[[], object]], None]:
    """Run a function after every fork (``@postfork``) or only in worker N (``@postfork(N)``).

    The plain form binds the decorated name to a callable entry that runs ``f()``; the
    ``@postfork(N)`` form binds it to ``None``. ``N == 0`` means every forked process.
    """
    if callable(f_or_wid):
        entry = _PostforkEntry(f_or_wid, 0)
        postfork_chain.append(entry)
        return entry
    wid = f_or_wid

    def register(f: Callable[[], object]) -> None:
        postfork_chain.append(_PostforkEntry(f, wid))

    return register


# --- signals --------------------------------------------------------------------------------


def get_free_signal() -> int:
    """Return the lowest signal number (0-255) that has no registered handler."""
    for num in range(_SIGNAL_COUNT):
        if not uwsgi.signal_registered(num):
            return num
    raise Exception("No free uwsgi signal available")


def _pick_signal(signum: int | None) -> int:
    # uWSGI looks for a free signal eagerly, when the decorator is built, even if an
    # explicit number is given (so a full table raises either way).
    free = get_free_signal()
    return free if signum is None else signum


def _signal_source(num: int, target: str, arm: Callable[[int], object]) -> _SignalDecorator:
    def register(f: _Handler) -> _Handler:
        uwsgi.register_signal(num, target, f)
        arm(num)
        return f

    return register


def signal(num: int, target: str = "") -> _SignalDecorator:
    """Register the decorated function as the handler of signal ``num``; returns it."""
    return _signal_source(num, target, lambda _num: None)


def timer(secs: int, signum: int | None = None, target: str = "") -> _SignalDecorator:
    """Run the function every ``secs`` seconds (``uwsgi.add_timer``)."""
    return _signal_source(_pick_signal(signum), target, lambda num: uwsgi.add_timer(num, secs))


def mstimer(msecs: int, signum: int | None = None, target: str = "") -> _SignalDecorator:
    """Run the function every ``msecs`` milliseconds (``uwsgi.add_ms_timer``)."""
    return _signal_source(_pick_signal(signum), target, lambda num: uwsgi.add_ms_timer(num, msecs))


def rbtimer(secs: int, signum: int | None = None, target: str = "") -> _SignalDecorator:
    """Run the function every ``secs`` seconds on a master rb-timer (``uwsgi.add_rb_timer``)."""
    return _signal_source(_pick_signal(signum), target, lambda num: uwsgi.add_rb_timer(num, secs))


def cron(
    minute: int,
    hour: int,
    day: int,
    month: int,
    dayweek: int,
    signum: int | None = None,
    target: str = "",
) -> _SignalDecorator:
    """Run the function on a cron-like schedule (``uwsgi.add_cron``; -N = every N)."""
    return _signal_source(
        _pick_signal(signum),
        target,
        lambda num: uwsgi.add_cron(num, minute, hour, day, month, dayweek),
    )


def filemon(path: str, signum: int | None = None, target: str = "") -> _SignalDecorator:
    """Run the function when ``path`` changes (``uwsgi.add_file_monitor``)."""
    return _signal_source(
        _pick_signal(signum), target, lambda num: uwsgi.add_file_monitor(num, path)
    )


# --- simple registrations and wrappers ------------------------------------------------------


def rpc(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Export the function as RPC ``name`` (``uwsgi.register_rpc``); returns it."""

    def register(f: Callable[P, R]) -> Callable[P, R]:
        uwsgi.register_rpc(name, f)
        return f

    return register


def erlang(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register an Erlang process (needs the ``uwsgi.erlang_register_process`` API)."""

    def register(f: Callable[P, R]) -> Callable[P, R]:
        uwsgi.erlang_register_process(name, f)
        return f

    return register


def lock(f: Callable[P, R]) -> Callable[P, R | None]:
    """Run the function holding uWSGI lock 0; in the spooler, skip it and return ``None``."""

    @functools.wraps(f)
    def locked(*args: P.args, **kwargs: P.kwargs) -> R | None:
        if uwsgi.i_am_the_spooler():
            logger.warning("@lock: %s not run: the spooler cannot take locks", f.__qualname__)
            return None
        uwsgi.lock()
        try:
            return f(*args, **kwargs)
        finally:
            uwsgi.unlock()

    return locked


def thread(f: Callable[..., object]) -> Callable[..., Callable[..., object]]:
    """Calling the function starts it in a daemon thread and returns the function itself."""

    @functools.wraps(f)
    def start(*args: Any) -> Callable[..., object]:
        name = f"uwsgidecorators.thread:{f.__qualname__}"
        threading.Thread(target=f, args=args, name=name, daemon=True).start()
        return f

    return start


def harakiri(secs: int) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Arm a ``secs``-second harakiri around each call; disarmed even when the call raises."""

    def decorate(f: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(f)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            uwsgi.set_user_harakiri(secs)
            try:
                return f(*args, **kwargs)
            finally:
                uwsgi.set_user_harakiri(0)

        return guarded

    return decorate


# --- mule programs: @mule, @muleloop, @mulemsg, @farm --------------------------------------


def _require_mule_id(decorator: str, mule_id: object) -> int:
    if isinstance(mule_id, int):
        return mule_id
    raise TypeError(f"@{decorator} needs a mule id, e.g. @{decorator}(1); got {mule_id!r}")


class _MuleEntry:
    """Post-fork entry that runs ``f()`` once (or forever) in one mule."""

    def __init__(self, f: Callable[[], object], mule_id: int, forever: bool) -> None:
        self.f = f
        self.mule_id = mule_id
        self.forever = forever

    def __call__(self) -> None:
        if uwsgi.mule_id() != self.mule_id:
            return
        try:
            self.f()
            while self.forever:
                self.f()
        except Exception:
            # Report like an uncaught exception, then let the master respawn the mule.
            sys.excepthook(*sys.exc_info())
            sys.exit(1)

    def __repr__(self) -> str:
        kind = "muleloop" if self.forever else "mule"
        return f"<{kind} {self.f.__qualname__} mule={self.mule_id}>"


class _MuleMsgEntry:
    """Post-fork entry: in one mule, pass every non-empty message to ``f`` forever."""

    def __init__(self, f: Callable[[bytes], object], mule_id: int) -> None:
        self.f = f
        self.mule_id = mule_id

    def __call__(self) -> None:
        if uwsgi.mule_id() != self.mule_id:
            return
        while True:
            message = uwsgi.mule_get_msg()
            if message:
                self.f(message)

    def __repr__(self) -> str:
        return f"<mulemsg {self.f.__qualname__} mule={self.mule_id}>"


class _FarmEntry:
    """Post-fork entry: in farm members, pass every non-empty farm message to ``f``."""

    def __init__(self, f: Callable[[bytes], object], name: str | bytes | None) -> None:
        self.f = f
        self.name = name

    def __call__(self) -> None:
        member = uwsgi.in_farm() if self.name is None else uwsgi.in_farm(self.name)
        if not member:
            return
        while True:
            message = uwsgi.farm_get_msg()
            if message:
                self.f(message)

    def __repr__(self) -> str:
        return f"<farm {self.f.__qualname__} farm={self.name!r}>"


def mule(mule_id: int) -> Callable[[Callable[[], object]], None]:
    """Run the function once after fork in mule ``mule_id``; the decorated name is ``None``."""
    num = _require_mule_id("mule", mule_id)

    def register(f: Callable[[], object]) -> None:
        postfork_chain.append(_MuleEntry(f, num, forever=False))

    return register


def muleloop(mule_id: int) -> Callable[[Callable[[], object]], None]:
    """Run the function in an endless loop in mule ``mule_id``; the name is ``None``."""
    num = _require_mule_id("muleloop", mule_id)

    def register(f: Callable[[], object]) -> None:
        postfork_chain.append(_MuleEntry(f, num, forever=True))

    return register


def mulemsg(mule_id: int) -> Callable[[Callable[[bytes], object]], None]:
    """Feed every message of mule ``mule_id`` (``uwsgi.mule_get_msg``) to the function."""
    num = _require_mule_id("mulemsg", mule_id)

    def register(f: Callable[[bytes], object]) -> None:
        postfork_chain.append(_MuleMsgEntry(f, num))

    return register


@overload
def farm(name: Callable[[bytes], object], /) -> None: ...
@overload
def farm(name: str | bytes | None = None) -> Callable[[Callable[[bytes], object]], None]: ...
def farm(
    name: Callable[[bytes], object] | str | bytes | None = None,
) -> Callable[[Callable[[bytes], object]], None] | None:
    """Feed every message of farm ``name`` (any farm when ``None``) to the function."""
    if callable(name):
        postfork_chain.append(_FarmEntry(name, None))
        return None
    farm_name = name

    def register(f: Callable[[bytes], object]) -> None:
        postfork_chain.append(_FarmEntry(f, farm_name))

    return register


# --- @mulefunc -----------------------------------------------------------------------------

# Cleared the first time ``uwsgi.mule_msg`` rejects the ``block``/``timeout`` keywords.
_mule_msg_can_block = True


def _mule_key(f: Callable[..., object]) -> str:
    return f"{f.__module__}.{f.__qualname__}"


def _describe_target(target: _Target) -> str:
    if isinstance(target, bytes):
        return f"farm {target.decode('utf-8', 'replace')!r}"
    if isinstance(target, str):
        return f"farm {target!r}"
    return "any mule (shared queue)" if target == 0 else f"mule {target}"


def _rejects_blocking_keywords(exc: TypeError) -> bool:
    text = str(exc)
    return "block" in text or "timeout" in text or "keyword argument" in text


def _send_mule_call(key: str, payload: bytes, target: _Target) -> None:
    global _mule_msg_can_block
    timeout = MULEFUNC_TIMEOUT
    if _mule_msg_can_block:
        try:
            sent = uwsgi.mule_msg(payload, target, block=True, timeout=timeout)
        except TypeError as exc:
            if not _rejects_blocking_keywords(exc):
                raise
            _mule_msg_can_block = False
            logger.warning(
                "uwsgi.mule_msg() does not accept block/timeout (%s); "
                "@mulefunc calls will fail instead of waiting when a mule queue is full",
                exc,
            )
        else:
            if sent is False:
                raise RuntimeError(
                    f"@mulefunc {key}: could not send the call to {_describe_target(target)}: "
                    f"the queue was still full after {timeout:g} s"
                )
            return
    if uwsgi.mule_msg(payload, target) is False:
        raise RuntimeError(
            f"@mulefunc {key}: could not send the call to {_describe_target(target)}: "
            "the queue is full"
        )


def _make_mule_sender(f: Callable[P, object], target: _Target) -> Callable[P, None]:
    key = _mule_key(f)
    mule_functions[key] = f

    @functools.wraps(f)
    def send(*args: P.args, **kwargs: P.kwargs) -> None:
        call = {"service": MULEFUNC_SERVICE, "func": key, "args": args, "kwargs": kwargs}
        _send_mule_call(key, pickle.dumps(call), target)

    return send


@overload
def mulefunc(f_or_target: Callable[P, object], /) -> Callable[P, None]: ...
@overload
def mulefunc(f_or_target: _Target = 0, /) -> Callable[[Callable[P, object]], Callable[P, None]]: ...
def mulefunc(
    f_or_target: Callable[P, object] | _Target = 0, /
) -> Callable[P, None] | Callable[[Callable[P, object]], Callable[P, None]]:
    """Make calls to the function run in a mule instead of the caller.

    ``@mulefunc`` targets any mule, ``@mulefunc(N)`` mule N, ``@mulefunc('name')`` a farm.
    Calling the decorated function sends the call and returns ``None``.
    """
    if callable(f_or_target):
        return _make_mule_sender(f_or_target, 0)
    target = f_or_target

    def decorate(f: Callable[P, object]) -> Callable[P, None]:
        return _make_mule_sender(f, target)

    return decorate


def mule_msg_dispatcher(message: bytes) -> None:
    """Mule message hook: run the ``@mulefunc`` call a message carries, never raising."""
    size = len(message) if isinstance(message, bytes | bytearray | str) else -1
    try:
        call = pickle.loads(message)
    except Exception as exc:
        logger.warning("ignoring a %d-byte mule message: not a mulefunc call (%r)", size, exc)
        return
    if not isinstance(call, dict) or call.get("service") != MULEFUNC_SERVICE:
        kind = type(call).__name__
        logger.warning("ignoring a %d-byte mule message: not a mulefunc call (%s)", size, kind)
        return
    name = call.get("func")
    f = mule_functions.get(name) if isinstance(name, str) else None
    if f is None:
        logger.error(
            "mulefunc %r is not registered in this mule (is its module imported before fork?)",
            name,
        )
        return
    try:
        f(*call.get("args", ()), **call.get("kwargs", {}))
    except Exception:
        logger.exception("mulefunc %s raised", name)


# --- spooler -----------------------------------------------------------------------------

# Special keyword arguments that ``pass_arguments=True`` tasks put into the spool dict.
_SPOOL_SPECIAL_KEYS = ("spooler", "priority", "at", "body")


class _SpoolTask:
    """A function whose calls are enqueued in the spooler instead of run."""

    def __init__(
        self, f: Callable[..., Any], pass_arguments: bool, kind: str, ret_attr: str | None
    ) -> None:
        if "spooler" not in uwsgi.opt:
            raise Exception(f"you have to enable the uWSGI spooler to use @{kind} decorator")
        functools.update_wrapper(self, f)
        self.f = f
        self.name = f.__name__
        self.pass_arguments = pass_arguments
        self.ret_attr = ret_attr
        spooler_functions[self.name] = f
        f.spool = self.spool  # type: ignore[attr-defined]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.spool(*args, **kwargs)

    def spool(self, *args: Any, **kwargs: Any) -> Any:
        """Enqueue one call; returns what ``uwsgi.spool`` returns (the spool file name)."""
        task: dict[Any, Any] = {"ud_spool_func": self.name}
        if self.pass_arguments:
            task.update(kwargs.pop("message_dict", None) or {})
            for key in _SPOOL_SPECIAL_KEYS:
                if key in kwargs:
                    task[key] = kwargs.pop(key)
            task["args"] = pickle.dumps(args)
            task["kwargs"] = pickle.dumps(kwargs)
        else:
            if args:
                task.update(args[0])
            task.update(kwargs)
        if self.ret_attr is not None:
            task["ud_spool_ret"] = str(getattr(uwsgi, self.ret_attr))
        return uwsgi.spool({_utf8(k): _utf8(v) for k, v in task.items()})


def _utf8(value: Any) -> Any:
    return value.encode("utf-8") if isinstance(value, str) else value


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


class _SpoolDecorator:
    """``@spool`` / ``@spool(pass_arguments=True)`` and its two siblings."""

    def __init__(self, kind: str, ret_attr: str | None) -> None:
        self.kind = kind
        self.ret_attr = ret_attr

    @overload
    def __call__(self, f: Callable[..., Any], pass_arguments: bool = False) -> _SpoolTask: ...
    @overload
    def __call__(
        self, f: None = None, pass_arguments: bool = False
    ) -> Callable[[Callable[..., Any]], _SpoolTask]: ...
    def __call__(
        self, f: Callable[..., Any] | None = None, pass_arguments: bool = False
    ) -> _SpoolTask | Callable[[Callable[..., Any]], _SpoolTask]:
        if f is not None:
            return _SpoolTask(f, pass_arguments, self.kind, self.ret_attr)

        def decorate(g: Callable[..., Any]) -> _SpoolTask:
            return _SpoolTask(g, pass_arguments, self.kind, self.ret_attr)

        return decorate

    def __repr__(self) -> str:
        return f"<uwsgidecorators.{self.kind}>"


spool = _SpoolDecorator("spool", "SPOOL_OK")
spoolforever = _SpoolDecorator("spoolforever", "SPOOL_RETRY")
spoolraw = _SpoolDecorator("spoolraw", None)


def manage_spool_request(task_vars: Mapping[Any, Any]) -> int:
    """Spooler callable: run the task's function and return the spooler status code.

    Unknown functions raise ``KeyError`` (the spooler retries the task); the return value is
    ``int(vars['ud_spool_ret'])`` when present, else ``int()`` of the function's result.
    """
    task = {_text(k): v for k, v in task_vars.items()}
    has_arguments = "args" in task or "kwargs" in task
    args = pickle.loads(task.pop("args")) if "args" in task else ()
    kwargs = pickle.loads(task.pop("kwargs")) if "kwargs" in task else {}
    task = {k: _text(v) for k, v in task.items()}
    f = spooler_functions[task["ud_spool_func"]]
    result = f(*args, **kwargs) if has_arguments else f(task)
    return int(task.get("ud_spool_ret", result))


# --- import-time wiring ------------------------------------------------------------------

uwsgi.post_fork_hook = postfork_chain_hook
uwsgi.spooler = manage_spool_request
if callable(getattr(uwsgi, "install_mule_msg_hook", None)):
    uwsgi.install_mule_msg_hook(mule_msg_dispatcher)
else:
    uwsgi.mule_msg_hook = mule_msg_dispatcher
