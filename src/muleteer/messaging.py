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
import time

from muleteer import options as o
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


def mule_msg(
    rt: Runtime,
    message: object,
    target: object = None,
    block: bool = False,
    timeout: float | None = None,
) -> bool:
    data = _encode(message)
    queue = resolve_target(rt, target)
    limit = rt.config.get(o.MULE_MSG_RECV_SIZE)
    if len(data) > limit:
        raise ValueError(
            f"mule message of {len(data)} bytes is larger than the {limit}-byte limit "
            "(--mule-msg-recv-size)"
        )
    sock = queue.send
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            sock.send(data)
            sb = rt.scoreboard
            sb.ints[sb.sent_base + rt.slot * sb.nqueues + queue.index] += 1
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
    _require_mule(rt, "mule")
    buffer_size = int(buffer_size)
    limit = rt.config.get(o.MULE_MSG_RECV_SIZE)
    channels = rt.channels
    own = channels.mule_queues[rt.id]
    # Fast path: a message already waiting on the own queue costs one recv().
    data = _take(rt, own, buffer_size, limit)
    if data is not None:
        return data
    queues = [own, channels.shared_queue]
    if farms:
        queues += [channels.farm_queues[name] for name in channels.farms_of(rt.id)]
    signal_socks = {} if signals else {s.fileno(): s for s in rt.signal_sockets()}
    # uWSGI's priority: own queue, shared queue, signals, then the farms.
    order: list[MessageQueue | socket.socket] = [queues[0], queues[1]]
    order += list(signal_socks.values())
    order += queues[2:]
    poller = select.poll()
    for item in order:
        fd = item.recv.fileno() if isinstance(item, MessageQueue) else item.fileno()
        poller.register(fd, select.POLLIN)
    poller.register(channels.death_r, select.POLLIN)
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
        for item in order:
            if isinstance(item, MessageQueue):
                if item.recv.fileno() in ready:
                    data = _take(rt, item, buffer_size, limit)
                    if data is not None:
                        return data
                continue  # another thread or mule took it first: poll again
            if item.fileno() in ready:
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
    return mule_msg(rt, message, name)


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
