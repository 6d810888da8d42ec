"""The only place that forks, the child's first steps, and the reserved exit codes.

A forked child never returns into the master's stack: its entry runs inside
``try/finally: os._exit(code)``, so no ``except`` or ``finally`` of the master runs twice.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_MASTER_GONE = 1
EXIT_APP_LOAD = 22  # uWSGI's code for "need-app and no app": the master stops the server
EXIT_END = 30  # uWSGI's code for a mule whose program ended, or an immediate stop
EXIT_HARAKIRI = 31
EXIT_RECYCLE = 17  # a worker that retired itself (max-requests, reload-on-rss, SIGHUP)
EXIT_CRASH = 70

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int = signal.SIGKILL) -> None:
    """Ask Linux to kill this process when its parent dies (no-op elsewhere).

    The kernel clears this setting on any change of uid/gid, so it is set after the
    privilege drop (which happens in the master, before any fork). It fires when the
    *thread* that forked us exits; the master forks only from its main thread.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        # The process's own symbols include libc's prctl: no ctypes.util (which drags in
        # subprocess, shutil, ... - megabytes in every process).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("PR_SET_PDEATHSIG unavailable")


def flush_std() -> None:
    """Flush stdout/stderr before ``os._exit`` (which skips Python's own flushing)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def wait_writable(sock: socket.socket, timeout: float) -> None:
    """Block until `sock` can take more bytes, or raise TimeoutError."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    if not poller.poll(int(timeout * 1000)):
        raise TimeoutError(f"peer did not read for {timeout:g} s")


_CHILD_DEFAULTS = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGCHLD,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGINT,
)


def fork_child(entry: Callable[[], int], before: Callable[[], None] | None = None) -> int:
    """Fork; in the child run `before` then `entry`, and always ``os._exit``. Returns the pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    # Signals stay blocked across fork() until the child has put back the default
    # handlers: a SIGHUP in between would otherwise run the master's do-nothing handler
    # (writing to the master's wakeup fd) and be lost, leaving a reload waiting for this
    # child until its mercy runs out.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _CHILD_DEFAULTS)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return pid
    code = EXIT_CRASH
    try:
        signal.set_wakeup_fd(-1)
        for signum in _CHILD_DEFAULTS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        set_parent_death_signal()
        if before is not None:
            before()
        code = entry()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)  # noqa: T201 - what sys.exit("text") prints
    except KeyboardInterrupt:
        code = EXIT_END
    except BaseException:
        traceback.print_exc()
        code = EXIT_CRASH
    finally:
        flush_std()
        os._exit(code)
