"""The master: boot, one selector loop, respawn, reload and shutdown.

Boot order (uWSGI's): bind every listener once, drop privileges, create the scoreboard and
every channel, install the ``uwsgi`` module, import the app (unless lazy-apps), then fork
the workers and the mules. OS signals only write a byte to a wakeup socket; all the work
happens in the loop, which never sleeps: back-off, mercy and harakiri are deadlines the
loop waits for.

Signals of the master (uWSGI 2.0): SIGHUP graceful reload, SIGTERM brutal reload (or
shutdown with ``die-on-term``), SIGINT and SIGQUIT shutdown, SIGUSR1 stats to the log. A
reload re-executes the master with the same arguments once every child is gone; the
listening sockets stay open (passed on by descriptor), so connections that arrive
meanwhile wait in the backlog instead of being refused.
"""

from __future__ import annotations

import enum
import gc
import importlib
import logging
import os
import pwd
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import setproctitle

# The worker's modules are imported here, in the master, so that forked workers share
# their pages instead of each importing (and owning) a copy.
from muleteer import apploader, fifo, logs, mule, runtime, sockets, spawn, worker
from muleteer import options as o
from muleteer.apploader import AppLoadError, WSGIApp
from muleteer.compat import uwsgi as uwsgi_module
from muleteer.config import Config
from muleteer.ipc import Channels
from muleteer.locks import make_locks
from muleteer.runtime import InboxPort, Runtime
from muleteer.scoreboard import F, I, Scoreboard, Status
from muleteer.signalhub import HubActions, SignalHub
from muleteer.signals import MASTER
from muleteer.slots import Slot, SlotState
from muleteer.triggers import (
    TriggerError,
    parse_cron2_option,
    parse_cron_option,
    parse_timer_option,
    parse_touch_signal_option,
)

log = logging.getLogger(__name__)

MASTER_SIGNALS: tuple[int, ...] = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGCHLD,
)
HARAKIRI_GRACE = 1.0  # seconds a worker gets to answer 504 before SIGKILL


class BootError(Exception):
    """Start-up failed before any app code ran (binding, option values); exit status 1."""


class Phase(enum.Enum):
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"


class Master:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.workers = config.get(o.PROCESSES)
        self.mule_specs = config.mules
        self.slots = [Slot("worker", i) for i in range(1, self.workers + 1)]
        self.slots += [Slot("mule", m.id) for m in self.mule_specs]
        self.by_pid: dict[int, Slot] = {}
        self.commands: dict[int, Any] = {}  # command-cron pid -> Cron
        self.phase = Phase.RUNNING
        self.exit_code = 0
        self.reexec = False
        self.app: WSGIApp | None = None
        self.listeners: list[sockets.Listener] = []
        self.harakiri_sent: dict[int, float] = {}
        self.cwd = os.getcwd()
        self.reloads = int(os.environ.get("UWSGI_RELOADS", "0") or 0)
        self.check_interval = float(config.get(o.CHECK_INTERVAL))
        self.child_cleanup: list[Callable[[], None]] = []
        self.chain: list[Slot] = []
        self.chain_current: Slot | None = None
        self.chain_old_pid = 0

    # -- boot ----------------------------------------------------------------------------------

    def _title(self, role: str) -> None:
        setproctitle.setproctitle(f"{self.config.get(o.PROCNAME_PREFIX)}muleteer {role}")

    def _bind(self) -> None:
        inherited = sockets.take_inherited(os.environ)
        for spec in self.config.sockets:
            reused = inherited.pop((spec.protocol, spec.address), None)
            if reused is not None:
                self.listeners.append(reused)
                continue
            try:
                self.listeners.append(
                    sockets.bind(
                        spec.address,
                        spec.protocol,
                        self.config.get(o.LISTEN),
                        self.config.get(o.CHMOD_SOCKET),
                    )
                )
            except (sockets.AddressError, OSError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise BootError(
                    f"cannot bind {spec.protocol} socket {spec.address!r} (from {spec.source}): "
                    f"{reason}"
                ) from None
        for leftover in inherited.values():
            leftover.sock.close()  # an address the reload removed from the configuration
        for index, listener in enumerate(self.listeners):
            log.info(
                "%s socket %d bound to %s fd %d",
                listener.protocol,
                index,
                listener.name,
                listener.sock.fileno(),
            )
        if not self.listeners:
            log.info("no socket configured: only mules and signals will run")

    def _check_root(self) -> None:
        """Root without a uid to drop to is refused unless asked for (--allow-root):
        everything the app does would run as root."""
        if os.geteuid() != 0 or self.config.get(o.UID) is not None:
            return
        if not self.config.get(o.ALLOW_ROOT):
            raise BootError(
                "refusing to run as root without a uid: pass --uid USER (and --gid GROUP) to "
                "drop privileges after binding, or --allow-root to run as root anyway"
            )
        log.warning("*** WARNING: you are running muleteer as root !!! (use the uid option) ***")

    def _drop_privileges(self) -> None:
        """setgroups, setgid, setuid - in that order, after binding and before the app is
        imported or any child forked. PR_SET_PDEATHSIG is armed in each child after fork,
        i.e. after the drop, because the kernel clears it on any uid/gid change."""
        uid, gid = self.config.get(o.UID), self.config.get(o.GID)
        if uid is None and gid is None:
            return
        self._import_before_drop()
        if gid is None and uid is not None:
            gid = pwd.getpwuid(uid).pw_gid  # never keep root's group behind a dropped uid
        try:
            if os.geteuid() == 0:
                os.setgroups([])
            if gid is not None:
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)
        except OSError as exc:
            raise BootError(
                f"cannot drop privileges to uid {uid} gid {gid}: {exc.strerror}"
            ) from None
        if uid is not None and uid != 0:
            try:
                os.setuid(0)
            except OSError:
                pass
            else:
                raise BootError("privileges were not dropped: setuid(0) still succeeds")
        log.info("running as uid %d gid %d", os.getuid(), os.getgid())

    def _import_before_drop(self) -> None:
        """Import now what muleteer itself imports lazily: once the uid has changed, the
        standard library may no longer be readable (a Python under /root, mode 0700), and
        a failed import in the master loop would take the server down."""
        names = ["tempfile", "ipaddress", "urllib.parse", "pkgutil", "termios"]
        if self.config.get(o.STATS_HTTP):
            names.append("muleteer.metrics")
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                log.warning("could not import %s before dropping privileges: %s", name, exc)

    def _write_pidfile(self) -> None:
        path = self.config.get(o.PIDFILE)
        if path:
            with open(path, "w") as handle:
                handle.write(f"{os.getpid()}\n")

    def boot(self) -> None:
        self._title("master")
        umask = self.config.get(o.UMASK)
        if umask is not None:
            os.umask(umask)
        self._check_root()
        apploader.prepare(self.config)
        self._bind()
        self._write_pidfile()
        self._drop_privileges()
        farms = {f.name: f.mule_ids for f in self.config.farms}
        self.channels = Channels.create(
            self.workers,
            len(self.mule_specs),
            farms,
            self.config.get(o.SIGNAL_BUFSIZE),
            self.config.get(o.MULE_MSG_SIZE),
        )
        queues = [queue.name for queue in self.channels.queues()]
        self.scoreboard = Scoreboard(self.workers, len(self.mule_specs), queues)
        self.hub = SignalHub(
            self.channels, self.workers, len(self.mule_specs), self._active_workers
        )
        self.rt = Runtime(
            role="master",
            id=0,
            config=self.config,
            channels=self.channels,
            scoreboard=self.scoreboard,
            master_pid=os.getpid(),
            port=self.hub,
            locks=make_locks(1 + self.config.get(o.LOCKS)),
            listener_fds=[ls.sock.fileno() for ls in self.listeners],
        )
        runtime.install(self.rt)
        module = uwsgi_module.build(
            self.config.opt, self.workers, self.reloads > 0, self.config.get(o.THREADS)
        )
        module.sockets = list(self.rt.listener_fds)
        module.buffer_size = self.config.get(o.BUFFER_SIZE)
        self.rt.module = module
        uwsgi_module.install(module)
        for farm in self.config.farms:
            log.info("created farm %s mules:%s", farm.name, ",".join(map(str, farm.mule_ids)))
        self._add_option_triggers()
        lazy = self.config.get(o.LAZY_APPS)
        self.app = apploader.load_everything(self.config, shared=True, app=not lazy)
        if not lazy:
            self._check_app_loaded()
        # Objects that exist now stay on pages shared with every child after fork:
        # freezing them keeps the collector from touching (and so copying) those pages.
        gc.collect()
        gc.freeze()

    def _check_app_loaded(self) -> None:
        if self.app is not None:
            log.info("WSGI app 0 (mountpoint='') ready in %d seconds", 0)
            return
        if self.config.get(o.NEED_APP):
            raise AppLoadError("no application configured (need-app is set)")
        if self.listeners:
            log.warning("*** no app loaded: requests will be answered with 500 ***")

    def _add_option_triggers(self) -> None:
        cfg = self.config
        hub = self.hub
        try:
            for value in cfg.get(o.TIMER):
                num, seconds = parse_timer_option(value)
                hub.add_timer(num, seconds, MASTER)
            for value in cfg.get(o.RBTIMER):
                num, seconds = parse_timer_option(value, rb=True)
                hub.add_rb_timer(num, seconds, 0, MASTER)
            for value in cfg.get(o.CRON):
                hub.triggers.add_cron(parse_cron_option(value))
            for value in cfg.get(o.UNIQUE_CRON):
                hub.triggers.add_cron(parse_cron_option(value, unique=True))
            for value in cfg.get(o.CRON2):
                hub.triggers.add_cron(parse_cron2_option(value))
            for value in cfg.get(o.TOUCH_SIGNAL):
                path, num = parse_touch_signal_option(value)
                hub.add_touch(path, "signal", num)
            for value in cfg.get(o.FS_SIGNAL):
                path, num = parse_touch_signal_option(value, option="fs-signal")
                hub.add_file_monitor(num, os.path.abspath(path), MASTER)
        except TriggerError as exc:
            raise BootError(str(exc)) from None
        for path in cfg.get(o.TOUCH_RELOAD):
            hub.add_touch(path, "reload")
        for path in cfg.get(o.TOUCH_MULES_RELOAD):
            hub.add_touch(path, "mules-reload")
        for path in cfg.get(o.FS_RELOAD):
            hub.add_fs_reload(os.path.abspath(path))
        for path in cfg.get(o.TOUCH_WORKERS_RELOAD):
            hub.add_touch(path, "workers-reload")
        for path in cfg.get(o.TOUCH_CHAIN_RELOAD):
            hub.add_touch(path, "chain-reload")

    # -- children ------------------------------------------------------------------------------

    def _active_workers(self) -> list[int]:
        return [s.id for s in self.slots if s.kind == "worker" and s.state is SlotState.RUNNING]

    def _scoreboard_slot(self, slot: Slot) -> int:
        sb = self.scoreboard
        return sb.worker_slot(slot.id) if slot.kind == "worker" else sb.mule_slot(slot.id)

    def _child_runtime(self, slot: Slot) -> Runtime:
        rt = self.rt
        return Runtime(
            role=slot.kind,
            id=slot.id,
            config=self.config,
            channels=rt.channels,
            scoreboard=rt.scoreboard,
            master_pid=rt.master_pid,
            port=InboxPort(rt.channels.inbox_send),
            handlers=dict(rt.handlers),
            locks=rt.locks,
            module=rt.module,
            listener_fds=rt.listener_fds,
            slot=self._scoreboard_slot(slot),
        )

    def _child_main(self, slot: Slot) -> int:
        """Runs in the forked child; its return value is the exit code."""
        if os.getppid() != self.rt.master_pid:
            return spawn.EXIT_MASTER_GONE  # the master died before PDEATHSIG was armed
        for cleanup in self.child_cleanup:
            cleanup()
        rt = self._child_runtime(slot)
        runtime.install(rt)
        logs.set_role(slot.name)
        self._title(slot.name)
        self.channels.close_for_child(slot.kind, slot.id)
        if slot.kind == "mule":
            for listener in self.listeners:
                listener.sock.close()
        hook = getattr(rt.module, "post_fork_hook", None)
        if callable(hook):
            try:
                hook()
            except Exception:
                log.exception("post_fork_hook raised in %s", slot.name)
        if slot.kind == "mule":
            return mule.run_mule(rt, self.mule_specs[slot.id - 1].program)
        app = self.app
        if self.config.get(o.LAZY_APPS):
            try:
                app = apploader.load_everything(self.config, shared=False, app=True)
            except AppLoadError as exc:
                log.error("%s", exc)
                if self.config.get(o.NEED_APP) or not self.config.is_set(o.NEED_APP):
                    return spawn.EXIT_APP_LOAD
                app = None
        return worker.run_worker(rt, self.listeners, app)

    def spawn(self, slot: Slot, now: float) -> None:
        sb, index = self.scoreboard, self._scoreboard_slot(slot)
        base = index * I.COUNT
        for field in (I.DELTA_REQUESTS, I.STATUS, I.ACCEPTING, I.BOOTED):
            sb.ints[base + field] = 0
        for ffield in (F.HARAKIRI, F.USER_HARAKIRI, F.REQUEST_START, F.RECYCLE_DUE):
            sb.floats[index * F.COUNT + ffield] = 0.0
        sb.floats[index * F.COUNT + F.LAST_SPAWN] = time.time()
        sb.ints[base + I.RESPAWNS] += 1
        pid = spawn.fork_child(lambda: self._child_main(slot))
        sb.ints[base + I.PID] = pid
        slot.spawned(pid, now)
        self.by_pid[pid] = slot
        self.harakiri_sent.pop(pid, None)
        if slot.kind == "worker":
            log.info(
                "spawned muleteer worker %d (pid: %d, cores: %d)",
                slot.id,
                pid,
                self.config.get(o.THREADS),
            )
        else:
            log.info("spawned muleteer mule %d (pid: %d)", slot.id, pid)

    def _exited(self, pid: int, status: int, now: float) -> None:
        slot = self.by_pid.pop(pid, None)
        if slot is None:
            self._command_exited(pid, status)
            return
        code = os.waitstatus_to_exitcode(status)
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        sb_index = self._scoreboard_slot(slot)
        self.scoreboard.ints[sb_index * I.COUNT + I.PID] = 0
        self.scoreboard.ints[sb_index * I.COUNT + I.STATUS] = Status.DEAD
        was_stopping = slot.state is SlotState.STOPPING
        if code == spawn.EXIT_APP_LOAD and slot.kind == "worker" and self.phase is Phase.RUNNING:
            log.error(
                "worker %d (pid: %d) could not load the application: stopping the server "
                "(need-app)",
                slot.id,
                pid,
            )
            slot.exited(now, 0)
            self.exit_code = spawn.EXIT_APP_LOAD
            self.begin_stop(brutal=True)
            return
        retired_itself = slot.kind == "worker" and code == spawn.EXIT_RECYCLE
        # A worker that got as far as serving did not fail to start, however soon it was
        # killed: only processes that die before they serve are backed off.
        booted = slot.kind == "worker" and self.scoreboard.ints[sb_index * I.COUNT + I.BOOTED]
        delay = slot.exited(
            now, float(self.config.get(o.FORKBOMB_DELAY)), retired_itself or bool(booted)
        )
        if slot.state is SlotState.RETIRED:
            log.info("%s (pid: %d) %s", slot.name, pid, how)
            return
        if self.phase is not Phase.RUNNING:
            slot.retire()
            log.info("%s (pid: %d) %s", slot.name, pid, how)
            return
        if was_stopping or retired_itself:
            log.info("%s (pid: %d) %s: respawning", slot.name, pid, how)
        elif slot.kind == "worker":
            log.warning(
                "DAMN ! worker %d (pid: %d) died, %s :( trying respawn ...", slot.id, pid, how
            )
        else:
            log.warning("mule %d (pid: %d) %s, respawning", slot.id, pid, how)
        if delay > 0:
            log.warning("%s keeps dying at start: respawn in %.1f s", slot.name, delay)

    def _command_exited(self, pid: int, status: int) -> None:
        cron = self.commands.pop(pid, None)
        if cron is None:
            return
        elapsed = int(time.time() - (cron.started_at or time.time()))
        log.info(
            '[uwsgi-cron] command "%s" running with pid %d exited after %d second(s)',
            cron.command,
            pid,
            elapsed,
        )
        cron.pid = None
        cron.started_at = None

    def reap(self) -> None:
        now = time.monotonic()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._exited(pid, status, now)

    def run_command(self, cron: Any) -> None:
        # posix_spawn, not subprocess: a discarded Popen object would reap the child
        # behind the master's waitpid(-1) loop. The command gets its own session so a
        # harakiri can kill everything it started.
        try:
            pid = os.posix_spawn(
                "/bin/sh", ["/bin/sh", "-c", cron.command], os.environ, setsid=True
            )
        except OSError as exc:
            log.error('[uwsgi-cron] cannot run "%s": %s', cron.command, exc)
            return
        cron.pid = pid
        cron.started_at = time.time()
        self.commands[pid] = cron
        log.info('[uwsgi-cron] running "%s" (pid %d)', cron.command, pid)

    def check_cron_harakiri(self) -> None:
        default = self.config.get(o.CRON_HARAKIRI)
        now = time.time()
        for pid, cron in self.commands.items():
            limit = cron.harakiri if cron.harakiri != 0 else default
            if limit > 0 and cron.started_at and now - cron.started_at > limit:
                log.error(
                    '[uwsgi-cron] command "%s" (pid %d) killed by harakiri after %d s',
                    cron.command,
                    pid,
                    limit,
                )
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                cron.started_at = None  # killed once; the reaper clears the rest

    # -- phases ------------------------------------------------------------------------------

    def _stop_children(
        self,
        sig: int,
        reason: str,
        kinds: tuple[str, ...] = ("worker", "mule"),
        respawn: bool = False,
    ) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.kind not in kinds:
                continue
            if slot.state is SlotState.EMPTY and not respawn:
                slot.retire()
                continue
            if slot.pid and slot.state in (SlotState.RUNNING, SlotState.STOPPING):
                mercy = self.config.get(
                    o.WORKER_RELOAD_MERCY if slot.kind == "worker" else o.MULE_RELOAD_MERCY
                )
                slot.stop(now, float(mercy), reason, respawn)
                try:
                    os.kill(slot.pid, sig)
                except ProcessLookupError:
                    pass

    def begin_reload(self, brutal: bool) -> None:
        if self.phase is not Phase.RUNNING:
            return  # a reload or a stop is already under way: coalesce
        if self.config.get(o.EXIT_ON_RELOAD):
            self.begin_stop(brutal=brutal)
            return
        self.phase = Phase.RELOADING
        self.reexec = True
        if brutal:
            log.info("...brutally killing workers...")
            self._stop_children(signal.SIGTERM, "brutal reload")
        else:
            log.info("...gracefully killing workers...")
            self._stop_children(signal.SIGHUP, "graceful reload")

    def begin_stop(self, brutal: bool = True) -> None:
        if self.phase is Phase.STOPPING:
            return
        self.phase = Phase.STOPPING
        self.reexec = False
        log.info(
            "SIGINT/SIGQUIT received...killing workers..."
            if brutal
            else "graceful shutdown: stopping workers..."
        )
        self._stop_children(signal.SIGINT if brutal else signal.SIGHUP, "shutdown")

    def reload_mules(self, reason: str) -> None:
        log.info("%s: reloading every mule", reason)
        self._stop_children(signal.SIGHUP, reason, kinds=("mule",), respawn=True)

    # -- periodic checks ---------------------------------------------------------------------

    def check_deadlines(self, now: float) -> None:
        if self.commands:
            self.check_cron_harakiri()
        sb = self.scoreboard
        for slot in self.slots:
            if not slot.pid:
                continue
            if slot.state is SlotState.STOPPING and now >= slot.mercy_deadline:
                log.warning(
                    "%s (pid: %d) is taking too much time to die...NO MERCY !!!",
                    slot.name,
                    slot.pid,
                )
                self._kill(slot.pid, signal.SIGKILL)
                slot.mercy_deadline = now + 3600
                continue
            index = self._scoreboard_slot(slot)
            base = index * F.COUNT
            deadline = sb.floats[base + F.HARAKIRI]
            user = sb.floats[base + F.USER_HARAKIRI]
            expired = (0 < deadline <= now) or (0 < user <= now)
            if not expired or slot.pid in self.harakiri_sent:
                continue
            self.harakiri_sent[slot.pid] = now
            sb.ints[index * I.COUNT + I.HARAKIRI_COUNT] += 1
            if slot.kind == "worker":
                log.error(
                    "*** HARAKIRI ON WORKER %d (pid: %d, try: 1, graceful: yes) ***",
                    slot.id,
                    slot.pid,
                )
                self._kill(slot.pid, signal.SIGALRM)
                slot.stop(now, HARAKIRI_GRACE, "harakiri", respawn=True)
            else:
                signum = int(sb.floats[base + F.HARAKIRI_SIGNAL])
                if 0 < deadline <= now:
                    log.error(
                        "*** HARAKIRI ON MULE %d HANDLING SIGNAL %d (pid: %d) ***",
                        slot.id,
                        signum,
                        slot.pid,
                    )
                else:
                    log.error("*** HARAKIRI ON MULE %d (pid: %d) ***", slot.id, slot.pid)
                self._kill(slot.pid, signal.SIGKILL)

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def maintain(self, now: float) -> None:
        if self.phase is not Phase.RUNNING:
            return
        for slot in self.slots:
            if slot.due(now):
                self.spawn(slot, now)

    def log_stats(self) -> None:
        sb = self.scoreboard
        for slot in self.slots:
            index = self._scoreboard_slot(slot)
            log.info(
                "%s pid=%d state=%s requests=%d signals=%d respawns=%d",
                slot.name,
                slot.pid,
                slot.state.value,
                sb.get(index, I.REQUESTS),
                sb.get(index, I.SIGNALS),
                sb.get(index, I.RESPAWNS),
            )

    # -- reloads of part of the server ---------------------------------------------------------

    def reload_workers(self, brutal: bool, reason: str) -> None:
        """Replace every worker (the master is not re-executed; uWSGI's `w`/`W`)."""
        if self.phase is not Phase.RUNNING:
            return
        log.info("%s: %s reload of the workers", reason, "brutal" if brutal else "graceful")
        self._stop_children(
            signal.SIGTERM if brutal else signal.SIGHUP, reason, kinds=("worker",), respawn=True
        )

    def begin_chain_reload(self, reason: str) -> None:
        """Replace the workers one at a time: the next one is stopped only once the
        previous one's replacement is accepting, so capacity never drops to zero."""
        if self.phase is not Phase.RUNNING or self.chain:
            return
        log.info("%s: chain reload starting", reason)
        self.chain = [s for s in self.slots if s.kind == "worker"]
        self.chain_current = None
        self.step_chain(time.monotonic())

    def step_chain(self, now: float) -> None:
        current = self.chain_current
        if current is not None:
            index = self._scoreboard_slot(current)
            replaced = current.state is SlotState.RUNNING and current.pid != self.chain_old_pid
            if not (replaced and self.scoreboard.get(index, I.ACCEPTING)):
                return
            self.chain_current = None
        if not self.chain:
            if current is not None:
                log.info("chain reload complete")
            return
        slot = self.chain.pop(0)
        self.chain_current = slot
        self.chain_old_pid = slot.pid
        if slot.pid:
            mercy = float(self.config.get(o.WORKER_RELOAD_MERCY))
            slot.stop(now, mercy, "chain reload", respawn=True)
            self._kill(slot.pid, signal.SIGHUP)
            log.info("chain reload: worker %d (pid: %d) asked to stop", slot.id, slot.pid)

    def on_os_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.begin_reload(brutal=False)
        elif signum == signal.SIGTERM:
            if self.config.get(o.DIE_ON_TERM):
                self.begin_stop(brutal=True)
            else:
                self.begin_reload(brutal=True)
        elif signum in (signal.SIGINT, signal.SIGQUIT):
            self.begin_stop(brutal=True)
        elif signum == signal.SIGUSR1:
            self.log_stats()

    def on_fifo_command(self, command: str) -> None:
        log.info("master fifo: %r (%s)", command, fifo.COMMANDS[command])
        if command == "r":
            self.begin_reload(brutal=False)
        elif command == "R":
            self.begin_reload(brutal=True)
        elif command == "c":
            self.begin_chain_reload("master fifo")
        elif command in "wW":
            self.reload_workers(command == "W", "master fifo")
        elif command == "m":
            self.reload_mules("master fifo")
        elif command == "q":
            self.begin_stop(brutal=False)
        elif command == "Q":
            self.begin_stop(brutal=True)
        elif command == "s":
            self.log_stats()
        elif command == "P":
            self._write_pidfile()
        elif command == "l":
            logs.reopen(self.config.get(o.LOGTO))
            # Every child has its own descriptor of the old file: they reopen on SIGWINCH.
            for slot in self.slots:
                if slot.pid:
                    self._kill(slot.pid, signal.SIGWINCH)

    def apply(self, actions: HubActions) -> None:
        for path in actions.reload:
            log.info("*** %s has been touched... grace them all !!! ***", path)
            self.begin_reload(brutal=False)
        for path in actions.mules_reload:
            self.reload_mules(f"{path} has been touched")
        for path in actions.workers_reload:
            self.reload_workers(False, f"{path} has been touched")
        for path in actions.chain_reload:
            self.begin_chain_reload(f"{path} has been touched")
        for cron in actions.commands:
            self.run_command(cron)

    def timeout(self, now: float) -> float:
        """How long the loop may wait: until the nearest deadline, at most a check interval."""
        timeout = self.check_interval
        deadline = self.hub.next_deadline()
        if deadline is not None:
            timeout = min(timeout, deadline - now)
        for slot in self.slots:
            if slot.state is SlotState.EMPTY and self.phase is Phase.RUNNING:
                timeout = min(timeout, slot.respawn_at - now)
            elif slot.state is SlotState.STOPPING:
                timeout = min(timeout, slot.mercy_deadline - now)
        if self.config.get(o.HARAKIRI) or self.config.get(o.MULE_HARAKIRI) or self.chain_current:
            timeout = min(timeout, 0.1)
        return max(0.0, timeout)

    def all_up(self) -> bool:
        return all(s.state is SlotState.RUNNING for s in self.slots)

    # -- exit ----------------------------------------------------------------------------------

    def finish(self) -> int:
        self.hub.close()
        if not self.reexec:
            if self.config.get(o.VACUUM):
                sockets.unlink_unix(self.listeners)
                pidfile = self.config.get(o.PIDFILE)
                if pidfile:
                    try:
                        os.unlink(pidfile)
                    except OSError:
                        pass
            log.info("goodbye to muleteer.")
            return self.exit_code
        self._reexec()
        return 1  # not reached unless exec failed

    def _reexec(self) -> None:
        log.info("binary reloading muleteer...")
        env = dict(os.environ)
        env[sockets.INHERIT_ENV] = sockets.export_for_exec(self.listeners)
        env["UWSGI_RELOADS"] = str(self.reloads + 1)
        os.chdir(self.cwd)
        signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        argv = [sys.executable, "-m", "muleteer", *self.config.argv]
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, argv, env)
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
            log.error("cannot re-execute the master (%s): exiting", exc)


def run_master(config: Config) -> int:
    master = Master(config)
    try:
        master.boot()
    except BootError as exc:
        log.error("%s", exc)
        return 1
    except AppLoadError as exc:
        log.error("%s", exc)
        return spawn.EXIT_APP_LOAD
    from muleteer.masterloop import MasterLoop

    MasterLoop(master).run()
    return master.finish()
