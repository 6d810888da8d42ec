"""Mule messages: ``mule_msg``, ``mule_get_msg``, ``farm_msg``, ``farm_get_msg``.

Senders write whole messages straight into a mule's queue, the shared queue or a farm's
queue (datagram socketpairs made by the master before fork; see ``ipc``). The semantics
are uWSGI 2.0's, including its surprises (``mule_get_msg`` returns ``b''`` on timeout and
runs signal handlers only with ``signals=False``), with DESIGN.md's deviations: nothing is
lost silently (a refused message returns False *and* is counted and logged; an oversized
one raises), invalid targets raise ``ValueError``, and ``block=True`` waits for room.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from muleteer import options as o
from muleteer import runtime
from muleteer.ipc import MessageQueue
from muleteer.runtime import Runtime

log = logging.getLogger(__name__)

_WARN_EVERY = 5.0  # seconds between two "queue full" warnings for one queue
_last_warning: dict[str, float] = {}


def _encode(message: object) -> bytes:
    if isinstance(message, str):
        return message.encode("utf-8")
    if isinstance(message, bytes):
        return message
    try:
        return bytes(memoryview(message))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"mule message must be str or a bytes-like object, not {type(message).__name__}"
        ) from None


def _farm_name(name: str | bytes) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else name


def resolve_target(rt: Runtime, target: object) -> MessageQueue:
    """uWSGI's target rules: none/0 = shared, int N = mule N, str/bytes = farm name."""
    channels = rt.channels
    mules = len(channels.mule_queues) - 1
    if mules == 0:
        raise ValueError("no mule configured")
    if target is None:
        return channels.shared_queue
    if isinstance(target, int):  # bool included, as in uWSGI
        if target == 0:
            return channels.shared_queue
        if not 1 <= target <= mules:
            raise ValueError(f"invalid mule number {target} ({mules} mule(s) configured)")
        return channels.mule_queues[target]
    if isinstance(target, str | bytes):
        name = _farm_name(target)
        if name not in channels.farm_queues:
            raise ValueError(f"unknown farm {name!r}")
        return channels.farm_queues[name]
    raise ValueError(f"invalid mule target {target!r}")


def _refused(rt: Runtime, queue: MessageQueue, size: int) -> bool:
    rt.scoreboard.count_rejected(queue.index)
    now = time.monotonic()
    if now - _last_warning.get(queue.name, 0.0) >= _WARN_EVERY:
        _last_warning[queue.name] = now
        total = rt.scoreboard.rejected(queue.index)
        log.warning(
            "*** MULE MSG QUEUE IS FULL: a %d-byte message to %s was refused (%d refused so "
            "far; raise --mule-msg-size, or send with block=True) ***",
            size,
            queue.name,
            total,
        )
    return False


@dataclass
class _Fast:
    """Per-process lookup tables for the hot paths (``mule_msg``/``mule_get_msg`` run
    hundreds of thousands of times a second)."""

    limit: int
    targets: dict[object, MessageQueue]  # None, 0, 1..M and farm names (str and bytes)
    own: MessageQueue | None
    sent_row: int
    received_row: int
    ints: Any
    local: threading.local = field(default_factory=threading.local)


def _fast(rt: Runtime) -> _Fast:
    cache: _Fast | None = rt.msg_cache
    if cache is not None:
        return cache
    channels = rt.channels
    targets: dict[object, MessageQueue] = {}
    if len(channels.mule_queues) > 1:
        targets[None] = targets[0] = channels.shared_queue
        for ident in range(1, len(channels.mule_queues)):
            targets[ident] = channels.mule_queues[ident]
        for name, queue in channels.farm_queues.items():
            targets[name] = targets[name.encode()] = queue
    sb = rt.scoreboard
    cache = _Fast(
        limit=rt.config.get(o.MULE_MSG_RECV_SIZE),
        targets=targets,
        own=channels.mule_queues[rt.id] if rt.role == "mule" else None,
        sent_row=sb.sent_base + rt.slot * sb.nqueues,
        received_row=sb.received_base + rt.slot * sb.nqueues,
        ints=sb.ints,
    )
    rt.msg_cache = cache
    return cache


def mule_msg(
    message: object, target: object = None, *, block: bool = False, timeout: float | None = None
) -> bool:
    """``uwsgi.mule_msg`` itself: the facade binds this function, so that sending a
    message costs one Python frame (workers call it hundreds of thousands of times a
    second). It sends in the runtime of the calling process."""
    rt = runtime._CURRENT or runtime.current()
    fast = rt.msg_cache or _fast(rt)
    data = message if type(message) is bytes else _encode(message)
    try:
        queue = fast.targets[target]
    except (KeyError, TypeError):
        queue = resolve_target(rt, target)  # raises the precise ValueError
    if len(data) > fast.limit:
        raise ValueError(
            f"mule message of {len(data)} bytes is larger than the {fast.limit}-byte limit "
            "(--mule-msg-recv-size)"
        )
    sock = queue.send
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            sock.send(data)
            fast.ints[fast.sent_row + queue.index] += 1
            return True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise ValueError(
                    f"mule message of {len(data)} bytes does not fit in the queue's socket "
                    f"buffer (--mule-msg-size {rt.config.get(o.MULE_MSG_SIZE)})"
                ) from None
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                raise
        if not block:
            return _refused(rt, queue, len(data))
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return _refused(rt, queue, len(data))
        _wait_writable(sock, 0.1 if remaining is None else min(remaining, 0.1))


def _wait_writable(sock: socket.socket, seconds: float) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    poller.poll(int(seconds * 1000))


def _recv(sock: socket.socket, buffer_size: int, limit: int) -> bytes | None:
    try:
        data = sock.recv(max(buffer_size, limit))
    except (BlockingIOError, InterruptedError):
        return None
    if len(data) > buffer_size:
        log.warning("mule message of %d bytes truncated to buffer_size=%d", len(data), buffer_size)
        data = data[:buffer_size]
    return data


def _require_mule(rt: Runtime, what: str) -> None:
    if rt.role != "mule":
        raise ValueError(f"you can receive {what} messages only in a mule !!!")


def _take(rt: Runtime, queue: MessageQueue, buffer_size: int, limit: int) -> bytes | None:
    data = _recv(queue.recv, buffer_size, limit)
    if data is not None:
        sb = rt.scoreboard
        sb.ints[sb.received_base + rt.slot * sb.nqueues + queue.index] += 1
    return data


def _waiter(
    rt: Runtime, fast: _Fast, signals: bool, farms: bool
) -> tuple[Any, list[tuple[int, MessageQueue | socket.socket]]]:
    """The poll object and the sources (in uWSGI's priority order: own queue, shared
    queue, signals, then the farms) for one mule_get_msg variant, made once per thread:
    a poll object may not be shared by threads polling at the same time."""
    key = (signals, farms)
    cache: dict[tuple[bool, bool], Any] = fast.local.__dict__.setdefault("waiters", {})
    found = cache.get(key)
    if found is not None:
        return found  # type: ignore[no-any-return]
    channels = rt.channels
    own = channels.mule_queues[rt.id]
    order: list[tuple[int, MessageQueue | socket.socket]] = [
        (own.recv.fileno(), own),
        (channels.shared_queue.recv.fileno(), channels.shared_queue),
    ]
    if not signals:  # uWSGI's inverted flag: only signals=False waits on them
        order += [(sock.fileno(), sock) for sock in rt.signal_sockets()]
    if farms:
        for name in channels.farms_of(rt.id):
            queue = channels.farm_queues[name]
            order.append((queue.recv.fileno(), queue))
    poller = select.poll()
    for fd, _ in order:
        poller.register(fd, select.POLLIN)
    poller.register(channels.death_r, select.POLLIN)
    cache[key] = (poller, order)
    return poller, order


def mule_get_msg(
    rt: Runtime,
    signals: object = True,
    farms: object = True,
    buffer_size: int = 65536,
    timeout: float = -1,
) -> bytes | None:
    """Next message for this mule: own queue, shared queue, [signals], member farms.

    As in uWSGI 2.0 the ``signals`` flag is inverted: only a falsy value makes the call
    also wait on the signal channels, run a handler in this thread and return None.
    """
    fast = rt.msg_cache or _fast(rt)
    own = fast.own
    if own is None:  # only a mule has its own queue (tested inline: this is the hot path)
        _require_mule(rt, "mule")
    assert own is not None
    limit = fast.limit
    # Fast path: a message already waiting on the own queue costs one recv().
    try:
        data = own.recv.recv(limit if buffer_size <= limit else buffer_size)
    except (BlockingIOError, InterruptedError):
        pass
    else:
        fast.ints[fast.received_row + own.index] += 1
        if len(data) > buffer_size:
            log.warning(
                "mule message of %d bytes truncated to buffer_size=%d", len(data), buffer_size
            )
            data = data[:buffer_size]
        return data
    buffer_size = int(buffer_size)
    channels = rt.channels
    poller, order = _waiter(rt, fast, bool(signals), bool(farms))
    deadline = None if timeout is None or timeout < 0 else time.monotonic() + float(timeout)
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        wait = -1 if left is None else max(0, int(left * 1000 + 0.999))
        try:
            ready = {fd for fd, _ in poller.poll(wait)}
        except InterruptedError:
            continue
        if channels.death_r in ready:
            rt.check_master()
        for fd, item in order:
            if fd not in ready:
                continue
            if isinstance(item, MessageQueue):
                data = _take(rt, item, buffer_size, fast.limit)
                if data is not None:
                    return data
                continue  # another thread or mule took it first: poll again
            num = rt.read_signal(item)
            if num is not None:
                rt.run_handler(num)
                return None
        if deadline is not None and time.monotonic() >= deadline:
            return b""


def farm_msg(rt: Runtime, farm: str | bytes, message: object) -> bool:
    """Send to a farm's queue. uWSGI returns None and does nothing for an unknown farm;
    muleteer logs it and returns False (and True when the message was queued)."""
    name = _farm_name(farm)
    if name not in rt.channels.farm_queues:
        log.warning("farm_msg: unknown farm %r: message not sent", name)
        return False
    return mule_msg(message, name)


def farm_get_msg(rt: Runtime) -> bytes | None:
    """Next message from any farm this mule belongs to (no timeout, no signals)."""
    _require_mule(rt, "farm")
    names = rt.channels.farms_of(rt.id)
    if not names:
        log.warning("mule %d is in no farm: farm_get_msg() blocks forever", rt.id)
    queues = {rt.channels.farm_queues[n].recv.fileno(): rt.channels.farm_queues[n] for n in names}
    limit = rt.config.get(o.MULE_MSG_RECV_SIZE)
    poller = select.poll()
    for fd in (*queues, rt.channels.death_r):
        poller.register(fd, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == rt.channels.death_r:
                rt.check_master()
                continue
            data = _take(rt, queues[fd], 65536, limit)
            if data is not None:
                return data


def in_farm(rt: Runtime, name: str | bytes | None = None) -> bool | None:
    """True when this mule is in farm `name` (or in any farm); None otherwise, as uWSGI."""
    if rt.role != "mule":
        return None
    farms = rt.channels.farms_of(rt.id)
    if name is None:
        return True if farms else None
    return True if _farm_name(name) in farms else None
