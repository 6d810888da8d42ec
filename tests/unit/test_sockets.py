"""Listening sockets: the options the kernel is asked for."""

from __future__ import annotations

import socket

import pytest

from muleteer import sockets


@pytest.mark.parametrize("protocol", ["http", "uwsgi"])
def test_tcp_request_listeners_defer_accept_until_data(protocol: str) -> None:
    listener = sockets.bind("127.0.0.1:0", protocol, 16, None)
    try:
        # Non-zero: the kernel queues a connection for accept() only once it sent bytes.
        assert listener.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
    finally:
        listener.sock.close()


def test_a_silent_connection_is_not_offered_to_accept() -> None:
    listener = sockets.bind("127.0.0.1:0", "http", 16, None)
    port = listener.sock.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as talker:
                talker.sendall(b"GET / HTTP/1.0\r\n\r\n")
                listener.sock.setblocking(True)
                listener.sock.settimeout(5)
                accepted, _ = listener.sock.accept()
                with accepted:
                    assert accepted.getpeername() == talker.getsockname()
                listener.sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    listener.sock.accept()
            assert silent.fileno() >= 0
    finally:
        listener.sock.close()
