"""An in-memory stand-in for the ``uwsgi`` module, for unit tests of code that imports it.

:class:`FakeUwsgi` records every call in ``calls`` (``(name, args, kwargs)`` tuples) and
keeps the state the tests drive: the current worker/mule id, the signal table, queued
mule/farm messages, farm membership. ``mule_get_msg`` and ``farm_get_msg`` raise
:class:`StopLoop` once their inbox is empty, so endless mule loops can be stopped.
:func:`installed` puts a fake into ``sys.modules["uwsgi"]`` and imports a fresh copy of a
module that depends on it.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

DECORATORS_MODULE = "muleteer.compat.uwsgidecorators"


class StopLoop(Exception):
    """Raised by the fake's message getters when there is nothing left to deliver."""


class FakeUwsgi(types.ModuleType):
    """Minimal recording ``uwsgi`` module."""

    SPOOL_OK = -2
    SPOOL_RETRY = -1
    SPOOL_IGNORE = 0

    def __init__(self, *, install_hook_api: bool = True, legacy_mule_msg: bool = False) -> None:
        super().__init__("uwsgi")
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.master_pid = 4242
        self.current_worker_id = 0
        self.current_mule_id = 0
        self.spooler_process = False
        self.farms: set[str] = set()
        self.opt: dict[str, Any] = {"master": True}
        self.signals: dict[int, tuple[str, Callable[..., object]]] = {}
        self.rpcs: dict[str, Callable[..., object]] = {}
        self.mule_messages: list[tuple[bytes, object]] = []
        self.mule_inbox: list[bytes | None] = []
        self.farm_inbox: list[bytes | None] = []
        self.mule_msg_result: bool | None = True
        self.spooled: list[dict[Any, Any]] = []
        self.legacy_mule_msg = legacy_mule_msg
        self.mule_msg_extra_hooks: list[Callable[[bytes], object]] = []
        if install_hook_api:
            self.install_mule_msg_hook = self._install_mule_msg_hook

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))

    def names(self) -> list[str]:
        """The names of the recorded calls, in order."""
        return [name for name, _args, _kwargs in self.calls]

    def calls_to(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """The ``(args, kwargs)`` of every recorded call to ``name``."""
        return [(args, kwargs) for n, args, kwargs in self.calls if n == name]

    # --- process identity ---------------------------------------------------------------

    def masterpid(self) -> int:
        self._record("masterpid")
        return self.master_pid

    def worker_id(self) -> int:
        self._record("worker_id")
        return self.current_worker_id

    def mule_id(self) -> int:
        self._record("mule_id")
        return self.current_mule_id

    def i_am_the_spooler(self) -> bool:
        self._record("i_am_the_spooler")
        return self.spooler_process

    # --- signals ------------------------------------------------------------------------

    def signal_registered(self, num: int) -> bool:
        self._record("signal_registered", num)
        return num in self.signals

    def register_signal(self, num: int, target: str, handler: Callable[..., object]) -> None:
        self._record("register_signal", num, target, handler)
        self.signals[num] = (target, handler)

    def add_timer(self, num: int, secs: int) -> None:
        self._record("add_timer", num, secs)

    def add_ms_timer(self, num: int, msecs: int) -> None:
        self._record("add_ms_timer", num, msecs)

    def add_rb_timer(self, num: int, secs: int, iterations: int = 0) -> None:
        self._record("add_rb_timer", num, secs, iterations)

    def add_cron(self, num: int, mi: int, h: int, d: int, mo: int, wd: int) -> bool:
        self._record("add_cron", num, mi, h, d, mo, wd)
        return True

    def add_file_monitor(self, num: int, path: str) -> None:
        self._record("add_file_monitor", num, path)

    # --- mules and farms ----------------------------------------------------------------

    def mule_msg(self, message: bytes | str, target: object = 0, **kwargs: Any) -> bool | None:
        if self.legacy_mule_msg and kwargs:
            raise TypeError(f"mule_msg() got an unexpected keyword argument {next(iter(kwargs))!r}")
        self._record("mule_msg", message, target, **kwargs)
        if self.mule_msg_result:
            payload = message.encode() if isinstance(message, str) else message
            self.mule_messages.append((payload, target))
        return self.mule_msg_result

    def mule_get_msg(
        self,
        signals: bool = True,
        farms: bool = True,
        buffer_size: int = 65536,
        timeout: int = -1,
    ) -> bytes | None:
        self._record("mule_get_msg")
        if not self.mule_inbox:
            raise StopLoop("mule inbox empty")
        return self.mule_inbox.pop(0)

    def in_farm(self, name: str | None = None) -> bool | None:
        self._record("in_farm", *(() if name is None else (name,)))
        if self.current_mule_id == 0:
            return None
        member = bool(self.farms) if name is None else name in self.farms
        return True if member else None

    def farm_get_msg(self) -> bytes | None:
        self._record("farm_get_msg")
        if not self.farm_inbox:
            raise StopLoop("farm inbox empty")
        return self.farm_inbox.pop(0)

    def _install_mule_msg_hook(self, hook: Callable[[bytes], object]) -> None:
        self._record("install_mule_msg_hook", hook)
        self.mule_msg_extra_hooks.append(hook)

    # --- everything else ----------------------------------------------------------------

    def lock(self, num: int = 0) -> None:
        self._record("lock", num)

    def unlock(self, num: int = 0) -> None:
        self._record("unlock", num)

    def set_user_harakiri(self, secs: int) -> None:
        self._record("set_user_harakiri", secs)

    def register_rpc(self, name: str, func: Callable[..., object], argc: int = 0) -> bool:
        self._record("register_rpc", name, func)
        self.rpcs[name] = func
        return True

    def spool(self, task: dict[Any, Any]) -> bytes:
        self._record("spool", task)
        self.spooled.append(task)
        return b"/tmp/spool/uwsgi_spoolfile_%d" % len(self.spooled)


@contextmanager
def installed(fake: FakeUwsgi, module: str = DECORATORS_MODULE) -> Iterator[types.ModuleType]:
    """Install ``fake`` as ``uwsgi``, import a fresh ``module``, and remove both afterwards."""
    saved_uwsgi = sys.modules.get("uwsgi")
    sys.modules.pop(module, None)
    sys.modules["uwsgi"] = fake
    try:
        yield importlib.import_module(module)
    finally:
        sys.modules.pop(module, None)
        parent, _, child = module.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], child):
            delattr(sys.modules[parent], child)
        if saved_uwsgi is None:
            sys.modules.pop("uwsgi", None)
        else:
            sys.modules["uwsgi"] = saved_uwsgi
