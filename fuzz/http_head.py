"""Atheris target (suite A5): the worker's incremental HTTP path, head and body.

Input: one control byte, then the bytes of a connection. The control byte picks the limits
and how the bytes are split into reads. The stream goes through the same path as the
worker (``tests/reliability/conftest.py``: scan_head, parse_head, Content-Length or
ChunkedDecoder, the next pipelined request) whole and split; the target fails when
anything but HttpError escapes, or when the split changes the verdict.

Run: python fuzz/http_head.py [libFuzzer flags] [corpus dirs]  (atheris on PYTHONPATH)
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["muleteer"]):
    from muleteer.http import Limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reliability.conftest import NARROW, TIGHT, drive  # after instrumenting muleteer

LIMITS = [Limits(), Limits(buffer_size=16384, limit_post=1 << 20), TIGHT, NARROW]
STATUSES = {400, 413, 414, 431, 501, 505}


def test_one_input(data: bytes) -> None:
    if not data:
        return
    control, stream = data[0], data[1:]
    limits = LIMITS[control % len(LIMITS)]
    whole = drive([stream], limits)
    assert whole.status is None or whole.status in STATUSES, whole
    rng = random.Random(control)
    pieces, pos = [], 0
    while pos < len(stream):
        size = rng.randint(1, 1 + (control >> 2))
        pieces.append(stream[pos : pos + size])
        pos += size
    split = drive(pieces, limits)
    assert split == whole, (split, whole)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
