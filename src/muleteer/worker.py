"""The worker process: one event loop over listeners, client connections and signals.

Each worker keeps its listeners, its open connections and its signal channels in one
poller, reads whatever is ready into per-connection buffers, and runs one WSGI call at a
time (or ``--threads`` at a time). A connection waiting for its next request costs a slot
in the poller, nothing more, so held keep-alive connections never make a new one wait;
one that dawdles in its headers is closed after ``http-header-timeout``. Signals are
handled between requests.

OS signals of a worker (as uWSGI's): SIGHUP = finish what is in progress and exit
(graceful), SIGINT/SIGTERM = exit now, SIGALRM = harakiri (sent by the master when a
request outlived ``--harakiri``: answer 504 if nothing was sent yet, then exit).
"""

from __future__ import annotations

import _socket
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from muleteer import http, logs, spawn, wsgi
from muleteer import options as o
from muleteer.apploader import WSGIApp
from muleteer.connection import MEMORY_BODY, Conn, ProtocolFailure, Request
from muleteer.poller import READ, Poller
from muleteer.runtime import MasterDied, Runtime
from muleteer.scoreboard import F, I, Status
from muleteer.sockets import Listener

log = logging.getLogger(__name__)

NO_APP = wsgi.error_response(
    "500 Internal Server Error", body=b"muleteer: no application is loaded\n"
)
GATEWAY_TIMEOUT = wsgi.error_response("504 Gateway Timeout")
SWEEP_EVERY = 0.5
KEEPALIVE_LINGER = 0.1  # how long a stopping worker keeps idle keep-alive connections open
RECYCLE_GAP = 0.2  # seconds between two workers' max-requests recycles
RECYCLE_PATIENCE = 5.0  # longest a due recycle waits for its siblings


def _allow_list(text: str) -> Callable[[str], bool]:
    """A peer check for `text` ("127.0.0.1,::1", "10.0.0.0/8", "*"), asked for every new
    connection: exact addresses are a set lookup; ipaddress is only imported (and the
    answers remembered per address) when the list has networks."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if "*" in items:
        return lambda _addr: True
    exact = {item for item in items if "/" not in item}
    cidrs = [item for item in items if "/" in item]
    networks: list[Any] = []
    if cidrs:
        import ipaddress

        for item in cidrs:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                log.warning("ignoring %r in an allow-list: not an IP network", item)
    verdicts: dict[str, bool] = {}

    def allowed(addr: str) -> bool:
        if addr == "" or addr.startswith("/"):
            return True  # unix sockets: always local
        if addr.startswith("::ffff:"):
            addr = addr[7:]  # an IPv4 peer on a dual-stack socket
        if addr in exact:
            return True
        if not networks:
            return False
        verdict = verdicts.get(addr)
        if verdict is None:
            import ipaddress

            try:
                ip = ipaddress.ip_address(addr)
                verdict = any(ip in net for net in networks)
            except ValueError:
                verdict = False
            if len(verdicts) < 4096:
                verdicts[addr] = verdict
        return verdict

    return allowed


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Worker:
    def __init__(self, rt: Runtime, listeners: list[Listener], app: WSGIApp | None) -> None:
        self.rt = rt
        self.app = app
        self.config = rt.config
        cfg = rt.config
        self.listeners = {ls.sock.fileno(): ls for ls in listeners}
        self.threads = cfg.get(o.THREADS)
        self.limits = http.Limits(
            buffer_size=cfg.get(o.BUFFER_SIZE), limit_post=cfg.get(o.LIMIT_POST)
        )
        self.memory_body = cfg.get(o.POST_BUFFERING) or MEMORY_BODY
        self.header_timeout = float(cfg.get(o.HEADER_TIMEOUT))
        self.socket_timeout = float(cfg.get(o.SOCKET_TIMEOUT))
        self.harakiri = cfg.get(o.HARAKIRI)
        self.logging = not cfg.get(o.DISABLE_LOGGING)
        limit = cfg.get(o.MAX_REQUESTS)
        self.max_requests = limit + (rt.id - 1) * cfg.get(o.MAX_REQUESTS_DELTA) if limit else 0
        self.reload_on_rss = cfg.get(o.RELOAD_ON_RSS) * 1024 * 1024
        self.min_lifetime = cfg.get(o.MIN_WORKER_LIFETIME)
        self.uwsgi_allowed = _allow_list(cfg.get(o.UWSGI_ALLOW_IPS))
        self.forwarded_allowed = _allow_list(cfg.get(o.FORWARDED_ALLOW_IPS))
        self.poller = Poller()
        self.conns: dict[int, Conn] = {}
        self.registered: set[int] = set()
        self.bases = {fd: self._base(ls) for fd, ls in self.listeners.items()}
        self.stopping = False
        self.stop_reason = ""
        self.spawned = time.monotonic()
        self.recycle_due = 0.0  # when a due recycle stops waiting for its siblings
        self.next_sweep = 0.0  # when the loop next looks for expired connections
        self.sig_fds: dict[int, tuple[socket.socket, bool]] = {}
        self.in_flight: dict[int, tuple[Conn, wsgi.Exchange]] = {}
        self.account_lock = threading.Lock()
        self.returned: queue.SimpleQueue[tuple[Conn, bool]] = queue.SimpleQueue()
        self.jobs: queue.SimpleQueue[tuple[Conn, Request] | None] = queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.os_signals: list[int] = []
        sb = rt.scoreboard
        self.base = rt.slot * I.COUNT
        self.fbase = rt.slot * F.COUNT
        self.ints = sb.ints
        self.floats = sb.floats

    def _base(self, listener: Listener) -> dict[str, Any]:
        name = listener.name
        host, _, port = name.rpartition(":") if listener.is_tcp else (name, "", "")
        return wsgi.base_environ(host.strip("[]") or name, port, self.threads > 1)

    # -- set-up ----------------------------------------------------------------------------

    def _install_os_signals(self) -> None:
        def record(signum: int, frame: FrameType | None) -> None:
            self.os_signals.append(signum)

        def die(signum: int, frame: FrameType | None) -> None:
            spawn.flush_std()
            os._exit(spawn.EXIT_END)

        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGHUP, record)
        signal.signal(signal.SIGINT, die)
        signal.signal(signal.SIGTERM, die)
        signal.signal(signal.SIGALRM, self._on_harakiri)
        signal.signal(signal.SIGWINCH, logs.reopen_handler(self.config.get(o.LOGTO)))
        logs.reopen_if_moved(self.config.get(o.LOGTO))

    def _register_fds(self) -> None:
        for fd in self.listeners:
            self.poller.register(fd, READ, exclusive=True)
        own, shared = self.rt.signal_sockets()
        for sock, is_shared in ((own, False), (shared, True)):
            self.sig_fds[sock.fileno()] = (sock, is_shared)
            self.poller.register(sock.fileno(), READ)
        self.poller.register(self.rt.channels.death_r, READ)
        self.poller.register(self.wake_r.fileno(), READ)

    def run(self) -> int:
        self._install_os_signals()
        self._register_fds()
        self.ints[self.base + I.ACCEPTING] = 1
        self.ints[self.base + I.BOOTED] = 1
        for _ in range(self.threads if self.threads > 1 else 0):
            threading.Thread(target=self._thread_main, daemon=True).start()
        self.next_sweep = time.monotonic() + SWEEP_EVERY
        try:
            while True:
                if self.stopping and not self.conns and not self.in_flight:
                    break
                timeout = max(0.0, self.next_sweep - time.monotonic())
                for fd, _events in self.poller.wait(timeout):
                    self._dispatch(fd)
                now = time.monotonic()
                if now >= self.next_sweep:
                    self._sweep(now)
                    self.next_sweep = now + (KEEPALIVE_LINGER if self.stopping else SWEEP_EVERY)
        except MasterDied:
            log.error("the master disconnected from this worker: shutting down the worker")
            return spawn.EXIT_MASTER_GONE
        if self.stop_reason:
            log.info("%s", self.stop_reason)
        # A distinct code tells the master this was a requested stop, not a crash: the
        # slot is respawned at once, without the start-up back-off.
        return spawn.EXIT_RECYCLE

    # -- the loop ----------------------------------------------------------------------------

    def _dispatch(self, fd: int) -> None:
        conn = self.conns.get(fd)
        if conn is not None:
            self._read(conn)
            return
        listener = self.listeners.get(fd)
        if listener is not None:
            self._accept(listener)
        elif fd in self.sig_fds:
            self._signal(*self.sig_fds[fd])
        elif fd == self.wake_r.fileno():
            self._wakeup()
        elif fd == self.rt.channels.death_r:
            self.rt.check_master()

    def _accept(self, listener: Listener) -> None:
        # Under load more connections are already queued: take up to a few in a row (one
        # failed accept() is cheaper than another trip through the poller). Siblings are
        # woken for the same queue meanwhile, so the load is still shared.
        for _ in range(8):
            if self.stopping or not self._accept_one(listener):
                return

    def _accept_one(self, listener: Listener) -> bool:
        lsock = listener.sock
        try:
            # _accept() gives the bare descriptor: wrapping it in the C socket type skips
            # socket.socket's Python-level set-up (and a getsockname) on every connection.
            fd, address = lsock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return False  # another worker was faster
        except OSError as exc:
            log.error("accept() on %s failed: %s", listener.name, exc)
            return False
        sock = _socket.socket(*listener.kind, fd)
        peer = (str(address[0]), str(address[1])) if listener.is_tcp else ("", "")
        if listener.protocol == "uwsgi" and listener.is_tcp and not self.uwsgi_allowed(peer[0]):
            log.warning("uwsgi connection from %s refused (not in uwsgi-allow-ips)", peer[0])
            sock.close()
            return True
        conn = Conn(
            sock,
            peer,
            listener.protocol,
            self.bases[listener.fd],
            self.limits,
            self.forwarded_allowed(peer[0]) if listener.is_tcp else True,
            self.memory_body,
        )
        conn.deadline = time.monotonic() + self.header_timeout
        conn.write_timeout = self.socket_timeout
        self.conns[conn.fd] = conn
        self._read(conn)  # the request is usually there already: skip one poll round
        return len(self.conns) < 1000  # past that, let the poller breathe first

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self._watch(conn)
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            if conn.protocol == "uwsgi" and conn.mid_request():
                log.warning(
                    "uwsgi from %s: connection closed in the middle of a packet "
                    "(%d bytes received)",
                    conn.peer[0] or "unix",
                    len(conn.buf),
                )
            self._close(conn)
            return
        if not conn.buf and conn.head is None:
            conn.deadline = time.monotonic() + self.header_timeout
        elif conn.head is not None or conn.uwsgi_vars is not None:
            conn.deadline = time.monotonic() + self.socket_timeout  # body: progress resets it
        conn.buf += data
        self._serve(conn)

    def _watch(self, conn: Conn) -> None:
        if conn.fd not in self.registered:
            self.poller.register(conn.fd, READ)
            self.registered.add(conn.fd)

    def _close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.fd, None)
        if conn.fd in self.registered:
            self.registered.discard(conn.fd)
            self.poller.unregister(conn.fd)
        try:
            conn.sock.close()
        except OSError:
            pass

    def _serve(self, conn: Conn) -> None:
        """Hand every complete buffered request of `conn` to the app, in order."""
        while not conn.closed:
            try:
                request = conn.next_request()
            except ProtocolFailure as failure:
                self._refuse(conn, failure)
                return
            if request is None:
                self._watch(conn)
                return
            if self.threads > 1:
                if conn.fd in self.registered:
                    self.registered.discard(conn.fd)
                    self.poller.unregister(conn.fd)
                self.jobs.put((conn, request))
                return
            keep = self._handle(conn, request)
            self._check_recycle()
            if not keep:
                self._close(conn)
                return
            conn.deadline = time.monotonic() + (
                self.header_timeout if conn.buf else self.socket_timeout
            )

    def _refuse(self, conn: Conn, failure: ProtocolFailure) -> None:
        log.warning("%s from %s: %s", conn.protocol, conn.peer[0] or "unix", failure.reason)
        if failure.response is not None:
            try:
                conn.sock.send(failure.response, socket.MSG_DONTWAIT)
            except OSError:
                pass
        self._close(conn)

    def _sweep(self, now: float) -> None:
        for conn in list(self.conns.values()):
            if conn.deadline and now > conn.deadline and conn.fd not in self.in_flight:
                if conn.mid_request():
                    log.info("closing %s: too slow sending its request", conn.peer[0] or "unix")
                self._close(conn)

    def _signal(self, sock: socket.socket, shared: bool) -> None:
        # From the shared channel take one byte, so idle siblings get their share.
        try:
            data = sock.recv(1 if shared else 256)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise MasterDied()
        for num in data:
            self.rt.run_handler(num)

    def _wakeup(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            try:
                conn, keep = self.returned.get_nowait()
            except queue.Empty:
                break
            self._check_recycle()
            if keep and not self.stopping:
                conn.deadline = time.monotonic() + self.socket_timeout
                self._serve(conn)
            else:
                self._close(conn)
        signals, self.os_signals = self.os_signals, []
        if signal.SIGHUP in signals:
            self.stop(f"gracefully stopping worker {self.rt.id} (pid: {os.getpid()})")

    def stop(self, reason: str) -> None:
        """Stop accepting; finish what is in progress and what was already accepted."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_reason = reason
        self.ints[self.base + I.ACCEPTING] = 0
        self.ints[self.base + I.STATUS] = Status.STOPPING
        for fd in self.listeners:
            self.poller.unregister(fd)
        now = time.monotonic()
        for conn in self.conns.values():
            if conn.served and not conn.mid_request() and conn.fd not in self.in_flight:
                # An idle keep-alive connection lingers a moment: a busy client's next
                # request is usually already on its way, and is served (with
                # ``Connection: close``) instead of meeting a closed socket.
                conn.deadline = min(conn.deadline, now + KEEPALIVE_LINGER)
            else:
                conn.deadline = min(conn.deadline, now + self.header_timeout)
        self.next_sweep = min(self.next_sweep, now + KEEPALIVE_LINGER)

    # -- running a request -----------------------------------------------------------------

    def _handle(self, conn: Conn, request: Request) -> bool:
        """Run the app for one request; True when the connection may serve another."""
        ints, base = self.ints, self.base
        send_all = conn.send_all
        keep = request.keep_alive and not self.stopping
        exchange = wsgi.Exchange(
            send_all, request.version, keep, request.head_only, request.protocol
        )
        if request.stream is not None:
            request.stream.send = send_all
            request.stream.timeout = self.socket_timeout
            exchange.reusable = request.stream.reusable
        start = time.monotonic()
        self.in_flight[conn.fd] = (conn, exchange)
        if self.threads == 1:
            ints[base + I.STATUS] = Status.BUSY
            self.floats[self.fbase + F.REQUEST_START] = time.time()
            if self.harakiri:
                self.floats[self.fbase + F.HARAKIRI] = start + self.harakiri
        else:
            self._account_start(start)
        ok = self._run_app(conn, request, exchange)
        if request.stream is not None and ok and not request.stream.finish():
            exchange.close_after = True
        elapsed = time.monotonic() - start
        self.in_flight.pop(conn.fd, None)
        self._account_end(exchange, elapsed, ok)
        if self.logging:
            self._log_request(request, exchange, elapsed)
        conn.served += 1
        return ok and not exchange.close_after and not self.stopping

    def _run_app(self, conn: Conn, request: Request, exchange: wsgi.Exchange) -> bool:
        environ = request.environ
        app = self.app
        try:
            if app is None:
                exchange.send_all(NO_APP)
                return False
            result = app(environ, exchange.start_response)
            try:
                if type(result) is list and len(result) == 1 and type(result[0]) is bytes:
                    exchange.send_single(result[0])
                elif isinstance(result, wsgi.FileWrapper) and exchange.try_sendfile(
                    result, conn.fd, self.socket_timeout
                ):
                    pass
                else:
                    for chunk in result:
                        exchange.write(chunk)
                exchange.finish()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            return True
        except (ConnectionError, TimeoutError) as exc:
            log.info("client %s went away: %s", conn.peer[0] or "unix", exc)
            return False
        except Exception:
            self.ints[self.base + I.EXCEPTIONS] += 1
            log.exception(
                "error in the application handling %s %s",
                environ.get("REQUEST_METHOD"),
                environ.get("REQUEST_URI", environ.get("PATH_INFO")),
            )
            if not exchange.headers_sent:
                try:
                    exchange.send_all(
                        wsgi.error_response("500 Internal Server Error", request.version)
                    )
                except OSError:
                    pass
            return False

    def _account_start(self, start: float) -> None:
        with self.account_lock:
            self.ints[self.base + I.STATUS] = Status.BUSY
            self.floats[self.fbase + F.REQUEST_START] = time.time()
            if self.harakiri and not self.floats[self.fbase + F.HARAKIRI]:
                self.floats[self.fbase + F.HARAKIRI] = start + self.harakiri

    def _account_end(self, exchange: wsgi.Exchange, elapsed: float, ok: bool) -> None:
        ints, base = self.ints, self.base
        micros = int(elapsed * 1_000_000)
        with self.account_lock:
            ints[base + I.REQUESTS] += 1
            ints[base + I.DELTA_REQUESTS] += 1
            ints[base + I.TX] += exchange.tx
            ints[base + I.RUNNING_TIME] += micros
            avg = ints[base + I.AVG_RT]
            ints[base + I.AVG_RT] = micros if not avg else (avg * 7 + micros) // 8
            if not self.in_flight:
                ints[base + I.STATUS] = Status.STOPPING if self.stopping else Status.IDLE
                self.floats[self.fbase + F.HARAKIRI] = 0.0
                self.floats[self.fbase + F.REQUEST_START] = 0.0
            elif self.harakiri:
                # The oldest request still running keeps the slot's deadline.
                self.floats[self.fbase + F.HARAKIRI] = time.monotonic() + self.harakiri

    def _check_recycle(self) -> None:
        if self.stopping or time.monotonic() - self.spawned < self.min_lifetime:
            return
        done = self.ints[self.base + I.DELTA_REQUESTS]
        if self.max_requests and done >= self.max_requests:
            # A count quota waits its turn while another worker is being replaced, so
            # capacity stays up (bounded by RECYCLE_PATIENCE).
            now = time.monotonic()
            if self.recycle_due == 0.0:
                self.recycle_due = now + RECYCLE_PATIENCE
                self.floats[self.rt.slot * F.COUNT + F.RECYCLE_DUE] = time.time()
            if now >= self.recycle_due or self._siblings_settled():
                self._retire(f"max requests reached ({done} >= {self.max_requests})")
                return
        if self.reload_on_rss:
            # A memory limit does not wait: the leak goes on while it would.
            rss = _rss_bytes()
            if rss > self.reload_on_rss:
                mib = 1 << 20
                self._retire(f"reload-on-rss: {rss // mib} MiB > {self.reload_on_rss // mib} MiB")

    def _retire(self, reason: str) -> None:
        self.stop(f"...The work of process {os.getpid()} is done ({reason}). Seeya!")

    def _siblings_settled(self) -> bool:
        """No other worker slot is being replaced or waits its turn first: each is
        accepting, none is a replacement (a slot's second spawn or later) younger than
        RECYCLE_GAP, and none fell due for its own recycle before this one did. Without
        this, load moving to the survivors makes workers with similar quotas recycle in
        lock-step. Workers spawned together at start-up do not wait for each other."""
        sb, floats = self.rt.scoreboard, self.floats
        wall = time.time()
        mine = floats[self.rt.slot * F.COUNT + F.RECYCLE_DUE]
        for worker_id in range(1, sb.workers + 1):
            if worker_id == self.rt.id:
                continue
            slot = sb.worker_slot(worker_id)
            if not self.ints[slot * I.COUNT + I.ACCEPTING]:
                return False
            replacement = self.ints[slot * I.COUNT + I.RESPAWNS] > 1
            if replacement and wall - floats[slot * F.COUNT + F.LAST_SPAWN] < RECYCLE_GAP:
                return False
            if 0.0 < floats[slot * F.COUNT + F.RECYCLE_DUE] < mine:
                return False
        return True

    def _log_request(self, request: Request, exchange: wsgi.Exchange, elapsed: float) -> None:
        env = request.environ
        total = sum(
            self.ints[(w) * I.COUNT + I.REQUESTS] for w in range(1, self.rt.scoreboard.workers + 1)
        )
        size = sum(len(k) + len(v) for k, v in env.items() if isinstance(v, str))
        status = (exchange.status or "500").split(" ", 1)[0]
        log.info(
            "[pid: %d|app: 0|req: %d/%d] %s () {%d vars in %d bytes} [%s] %s %s => generated "
            "%d bytes in %d msecs (%s %s) %d headers in %d bytes (1 switches on core 0)",
            os.getpid(),
            self.ints[self.base + I.DELTA_REQUESTS],
            total,
            env.get("REMOTE_ADDR", ""),
            len(env),
            size,
            time.strftime("%a %b %d %H:%M:%S %Y"),
            env.get("REQUEST_METHOD", ""),
            env.get("REQUEST_URI", env.get("PATH_INFO", "")),
            exchange.sent_body,
            int(elapsed * 1000),
            request.version,
            status,
            len(exchange.headers),
            exchange.tx - exchange.sent_body,
        )

    # -- threads -----------------------------------------------------------------------------

    def _thread_main(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            conn, request = job
            # The loop thread owns the poller and the connection table: hand it back.
            self.returned.put((conn, self._handle(conn, request)))
            try:
                self.wake_w.send(b"\0")
            except OSError:
                pass

    # -- harakiri --------------------------------------------------------------------------

    def _on_harakiri(self, signum: int, frame: FrameType | None) -> None:
        """The master says a request outlived --harakiri: answer 504 where nothing was sent
        yet, close everything, and exit (the master respawns the slot)."""
        for conn, exchange in list(self.in_flight.values()):
            if not exchange.headers_sent:
                try:
                    conn.sock.send(GATEWAY_TIMEOUT, socket.MSG_DONTWAIT)
                except OSError:
                    pass
            try:
                conn.sock.close()
            except OSError:
                pass
        spawn.flush_std()
        os._exit(spawn.EXIT_HARAKIRI)


def run_worker(rt: Runtime, listeners: list[Listener], app: WSGIApp | None) -> int:
    return Worker(rt, listeners, app).run()
