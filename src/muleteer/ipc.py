"""Every channel between processes, created by the master before the first fork.

The master keeps both ends of every socketpair for its whole life. That is what lets
queued signals and messages survive the death and respawn of the process they are for:
the new process inherits the same socketpair with its unread bytes still in it.

- Signal channels (``SOCK_STREAM``, one byte per signal): one per worker, one per mule,
  one shared by all workers ("any worker"), one shared by all mules ("any mule"), one per
  farm. Only the master writes to them; the kernel hands each byte to exactly one reader,
  which is how "the first idle worker" is chosen.
- Message queues (``SOCK_SEQPACKET`` on Linux, ``SOCK_DGRAM`` elsewhere, so one write is
  one message): one per mule, one shared, one per farm. Senders write straight into them;
  the master is not on the message path.
- The inbox (datagrams, children -> master): raised signals and registrations made after
  fork. The master is the only router.
- The death pipe: the master holds the only write end, so every child sees EOF on the read
  end the moment the master is gone, however it died.

All ends are non-blocking. O_NONBLOCK is a property of the open file description, shared
by every process holding it, so it is set once here.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import termios
from dataclasses import dataclass, field

# Linux keeps message boundaries on a connected stream-like socketpair with SEQPACKET;
# elsewhere (macOS) DGRAM socketpairs give the same one-write-one-message behaviour.
MESSAGE_SOCKET_TYPE = (
    socket.SOCK_SEQPACKET if sys.platform.startswith("linux") else socket.SOCK_DGRAM
)


def _pair(kind: int, bufsize: int) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    for end in (a, b):
        end.setblocking(False)
        if bufsize > 0:
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
    return a, b


@dataclass
class SignalChannel:
    """Master writes signal bytes on ``send``; the process(es) it serves read ``recv``."""

    name: str  # "worker 1", "any worker", "mule 2", "any mule", "farm jobs"
    send: socket.socket
    recv: socket.socket

    @classmethod
    def create(cls, name: str, bufsize: int) -> SignalChannel:
        send, recv = _pair(socket.SOCK_STREAM, bufsize)
        return cls(name, send, recv)

    def pending(self) -> int:
        """Bytes waiting to be read (``signal_queue`` in the stats)."""
        try:
            buf = fcntl.ioctl(self.recv.fileno(), termios.FIONREAD, b"\0\0\0\0")
            return int.from_bytes(buf, sys.byteorder)
        except OSError:
            return 0


@dataclass
class MessageQueue:
    """Senders write whole messages on ``send``; the mule(s) it serves read ``recv``."""

    name: str  # "mule 1", "shared", "farm jobs"
    send: socket.socket
    recv: socket.socket
    index: int = -1  # column of this queue in the scoreboard's message counters

    @classmethod
    def create(cls, name: str, bufsize: int) -> MessageQueue:
        send, recv = _pair(MESSAGE_SOCKET_TYPE, bufsize)
        return cls(name, send, recv)


@dataclass
class Channels:
    """The whole topology. Index 0 of the per-slot lists is unused: ids start at 1."""

    worker_signals: list[SignalChannel]
    any_worker: SignalChannel
    mule_signals: list[SignalChannel]
    any_mule: SignalChannel
    farm_signals: dict[str, SignalChannel]
    mule_queues: list[MessageQueue]
    shared_queue: MessageQueue
    farm_queues: dict[str, MessageQueue]
    inbox_send: socket.socket  # children write here
    inbox_recv: socket.socket  # the master reads here
    death_r: int
    death_w: int
    farm_members: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        workers: int,
        mules: int,
        farms: dict[str, tuple[int, ...]],
        signal_bufsize: int = 0,
        msg_bufsize: int = 0,
    ) -> Channels:
        placeholder = SignalChannel.create("unused", 0)
        worker_signals = [placeholder] + [
            SignalChannel.create(f"worker {i}", signal_bufsize) for i in range(1, workers + 1)
        ]
        mule_signals = [placeholder] + [
            SignalChannel.create(f"mule {i}", signal_bufsize) for i in range(1, mules + 1)
        ]
        queue_placeholder = MessageQueue.create("unused", 0)
        mule_queues = [queue_placeholder] + [
            MessageQueue.create(f"mule {i}", msg_bufsize) for i in range(1, mules + 1)
        ]
        inbox_send, inbox_recv = _pair(MESSAGE_SOCKET_TYPE, 0)
        death_r, death_w = os.pipe()
        os.set_blocking(death_r, False)
        channels = cls(
            worker_signals=worker_signals,
            any_worker=SignalChannel.create("any worker", signal_bufsize),
            mule_signals=mule_signals,
            any_mule=SignalChannel.create("any mule", signal_bufsize),
            farm_signals={
                name: SignalChannel.create(f"farm {name}", signal_bufsize) for name in farms
            },
            mule_queues=mule_queues,
            shared_queue=MessageQueue.create("shared", msg_bufsize),
            farm_queues={name: MessageQueue.create(f"farm {name}", msg_bufsize) for name in farms},
            inbox_send=inbox_send,
            inbox_recv=inbox_recv,
            death_r=death_r,
            death_w=death_w,
            farm_members=dict(farms),
        )
        for index, queue in enumerate(channels.queues()):
            queue.index = index
        return channels

    def close(self) -> None:
        """Close every end (the in-process test harness; never in the server)."""
        channels = [
            *self.worker_signals,
            self.any_worker,
            *self.mule_signals,
            self.any_mule,
            *self.farm_signals.values(),
        ]
        queues = [*self.mule_queues, self.shared_queue, *self.farm_queues.values()]
        ends = [end for c in channels for end in (c.send, c.recv)]
        ends += [end for q in queues for end in (q.send, q.recv)]
        for end in ends:
            end.close()
        self.inbox_send.close()
        self.inbox_recv.close()
        for fd in (self.death_r, self.death_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def queues(self) -> list[MessageQueue]:
        """Every message queue, in the order of the scoreboard's counters."""
        return [self.shared_queue, *self.mule_queues[1:], *self.farm_queues.values()]

    def farms_of(self, mule_id: int) -> list[str]:
        return [name for name, ids in self.farm_members.items() if mule_id in ids]

    def close_for_child(self, role: str, slot_id: int) -> None:
        """Close in a child what it must never touch.

        Every child closes the write end of the death pipe (otherwise EOF could never be
        seen), the master's read end of the inbox, and the master's write ends of the
        signal channels. Workers also close mule-side read ends: a worker reading a mule's
        queue would steal its messages. Message *send* ends stay open everywhere, so any
        process can ``mule_msg``.
        """
        os.close(self.death_w)
        self.inbox_recv.close()
        channels = [
            *self.worker_signals[1:],
            self.any_worker,
            *self.mule_signals[1:],
            self.any_mule,
            *self.farm_signals.values(),
        ]
        for channel in channels:
            channel.send.close()
        if role == "worker":
            for channel in (*self.mule_signals[1:], self.any_mule, *self.farm_signals.values()):
                channel.recv.close()
            for queue in (*self.mule_queues[1:], self.shared_queue, *self.farm_queues.values()):
                queue.recv.close()
            for index, channel in enumerate(self.worker_signals[1:], start=1):
                if index != slot_id:
                    channel.recv.close()
        elif role == "mule":
            for channel in (*self.worker_signals[1:], self.any_worker):
                channel.recv.close()
            for index, channel in enumerate(self.mule_signals[1:], start=1):
                if index != slot_id:
                    channel.recv.close()
            for index, queue in enumerate(self.mule_queues[1:], start=1):
                if index != slot_id:
                    queue.recv.close()
            mine = set(self.farms_of(slot_id))
            for name, channel in self.farm_signals.items():
                if name not in mine:
                    channel.recv.close()
            for name, queue in self.farm_queues.items():
                if name not in mine:
                    queue.recv.close()
