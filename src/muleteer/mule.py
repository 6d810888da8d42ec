"""The mule process: a programmed mule runs its program; a signal-only mule loops.

Program forms (uWSGI's order): ``path.py`` runs as ``__main__``; ``pkg.mod:func`` is
imported and called with no arguments; anything else makes a signal-only mule. When a
program returns, raises or exits the process ends and the master respawns the slot (with
back-off). Unlike uWSGI, an import error or an exception of a ``module:function`` program
is logged with its traceback.

The signal-only loop waits on the mule's own and the shared signal channels, its own and
the shared message queues, and the channels of every farm it belongs to. A message goes to
``uwsgi.mule_msg_hook`` and the hooks installed with ``install_mule_msg_hook``; with no
hook it is logged (once per 100) and counted, never dropped silently.
"""

from __future__ import annotations

import importlib
import logging
import os
import runpy
import select
import signal
import sys
from types import FrameType

from muleteer import logs, spawn
from muleteer import options as o
from muleteer.runtime import MasterDied, Runtime
from muleteer.scoreboard import I

log = logging.getLogger(__name__)


def _install_os_signals(logto: str | None) -> None:
    """uWSGI's mule: SIGHUP/SIGINT/SIGTERM end it at once, other noise is ignored;
    SIGWINCH (from the master FIFO's ``l``) reopens the log file."""

    def end(signum: int, frame: FrameType | None) -> None:
        spawn.flush_std()
        os._exit(spawn.EXIT_END)

    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, end)
    for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGWINCH, logs.reopen_handler(logto))
    logs.reopen_if_moved(logto)


def run_program(program: str) -> int:
    if program.endswith(".py"):
        # run_path installs a temporary __main__ module while the file runs, so
        # `if __name__ == "__main__":` blocks run and pickling of its functions works.
        runpy.run_path(program, run_name="__main__")
        return spawn.EXIT_END
    module_name, _, attr = program.partition(":")
    try:
        module = importlib.import_module(module_name)
        func = getattr(module, attr.removesuffix("()"))
    except (ImportError, AttributeError):
        log.exception("mule program %r cannot be loaded", program)
        return spawn.EXIT_END
    func()
    return spawn.EXIT_END


def _deliver_message(rt: Runtime, message: bytes) -> None:
    module = rt.module
    hooks = []
    if module is not None:
        legacy = getattr(module, "mule_msg_hook", None)
        if callable(legacy):
            hooks.append(legacy)
        hooks.extend(getattr(module, "mule_msg_extra_hooks", []) or [])
    if not hooks:
        unhandled = rt.scoreboard.ints[rt.slot * I.COUNT + I.MSGS_UNHANDLED] + 1
        rt.scoreboard.ints[rt.slot * I.COUNT + I.MSGS_UNHANDLED] = unhandled
        if unhandled == 1 or unhandled % 100 == 0:
            log.warning(
                "*** mule %d received a %d bytes message and has no message hook "
                "(%d such messages so far) ***",
                rt.id,
                len(message),
                unhandled,
            )
        return
    for hook in hooks:
        try:
            hook(message)
        except Exception:
            log.exception("mule message hook %r raised on mule %d", hook, rt.id)


def signal_only_loop(rt: Runtime) -> int:
    channels = rt.channels
    own_sig, shared_sig = rt.signal_sockets()
    farms = channels.farms_of(rt.id)
    signal_socks = {own_sig.fileno(): (own_sig, 256), shared_sig.fileno(): (shared_sig, 1)}
    for name in farms:
        sock = channels.farm_signals[name].recv
        signal_socks[sock.fileno()] = (sock, 1)
    queues = [channels.mule_queues[rt.id], channels.shared_queue]
    queues += [channels.farm_queues[name] for name in farms]
    queue_by_fd = {queue.recv.fileno(): queue for queue in queues}
    limit = rt.config.get(o.MULE_MSG_RECV_SIZE)
    poller = select.poll()
    for fd in (*signal_socks, *queue_by_fd, channels.death_r):
        poller.register(fd, select.POLLIN)
    sb = rt.scoreboard
    ints = sb.ints
    received = sb.received_base + rt.slot * sb.nqueues
    while True:
        try:
            ready = poller.poll()
        except InterruptedError:
            continue
        for fd, _ in ready:
            if fd == channels.death_r:
                rt.check_master()
            elif fd in signal_socks:
                sock, size = signal_socks[fd]
                try:
                    data = sock.recv(size)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    raise MasterDied()
                for num in data:
                    rt.run_handler(num)
            else:
                queue = queue_by_fd[fd]
                try:
                    message = queue.recv.recv(limit)
                except (BlockingIOError, InterruptedError):
                    continue  # a sibling mule took it first
                ints[received + queue.index] += 1
                _deliver_message(rt, message)


def run_mule(rt: Runtime, program: str | None) -> int:
    _install_os_signals(rt.config.get(o.LOGTO))
    try:
        if program is not None:
            return run_program(program)
        return signal_only_loop(rt)
    except MasterDied:
        log.error("mule %d braying: my master died, i will follow him...", rt.id)
        return spawn.EXIT_MASTER_GONE
    except SystemExit:
        raise
    except Exception:
        log.exception("mule %d program %r raised", rt.id, program)
        return spawn.EXIT_END
    finally:
        sys.stdout.flush()
