"""Atheris target (suite A5): the uwsgi packet parser.

Input: the bytes of a connection to a uwsgi socket. They go through the worker's packet
path (``tests/reliability/conftest.py`` ``uwsgi_read``: header, vars block, validation,
body by CONTENT_LENGTH) and through ``parse_vars`` directly; the target fails when
anything but UwsgiProtocolError escapes, or when a parsed block does not survive
re-encoding.

Run: python fuzz/uwsgi_packet.py [libFuzzer flags] [corpus dirs]  (atheris on PYTHONPATH)
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["muleteer"]):
    from muleteer import uwsgi_proto

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reliability.conftest import uwsgi_read  # after instrumenting muleteer


def test_one_input(data: bytes) -> None:
    verdict = uwsgi_read(data)
    assert verdict.end in ("request", "incomplete", "error")
    if verdict.vars is not None:
        assert uwsgi_proto.parse_vars(uwsgi_proto.encode_vars(verdict.vars)) == verdict.vars
    block = data[uwsgi_proto.HEADER_SIZE :]
    try:
        parsed = uwsgi_proto.parse_vars(block, max_vars=50)
    except uwsgi_proto.UwsgiProtocolError:
        return
    assert len(parsed) <= 50
    assert uwsgi_proto.parse_vars(uwsgi_proto.encode_vars(parsed)) == parsed
    try:
        uwsgi_proto.validate_request_vars(parsed)
    except uwsgi_proto.UwsgiProtocolError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
