"""A minimal readiness poller: epoll on Linux, poll(2) elsewhere (macOS).

``selectors`` would do, but the worker's loop runs once per request and the wrapper's
bookkeeping shows in profiles; this keeps the one call that matters (``wait``) thin.
"""

from __future__ import annotations

import select

READ = select.POLLIN
WRITE = select.POLLOUT
ERROR = select.POLLERR | select.POLLHUP


class Poller:
    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = None if self._epoll is not None else select.poll()

    def register(self, fd: int, events: int = READ, exclusive: bool = False) -> None:
        if self._epoll is not None:
            flags = events
            if exclusive and hasattr(select, "EPOLLEXCLUSIVE"):
                # Wake one waiting worker per new connection instead of all of them.
                flags |= select.EPOLLEXCLUSIVE
            self._epoll.register(fd, flags)
        else:
            assert self._poll is not None
            self._poll.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        if self._epoll is not None:
            self._epoll.modify(fd, events)
        else:
            assert self._poll is not None
            self._poll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        try:
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                assert self._poll is not None
                self._poll.unregister(fd)
        except (KeyError, OSError, ValueError):
            pass

    def wait(self, timeout: float | None) -> list[tuple[int, int]]:
        """Ready (fd, events); `timeout` in seconds, None = forever."""
        if self._epoll is not None:
            return self._epoll.poll(-1 if timeout is None else max(timeout, 0.0))
        assert self._poll is not None
        return self._poll.poll(None if timeout is None else max(int(timeout * 1000), 0))

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
