"""A2: muleteer's own regression corpus (tests/data/http_corpus), fed five ways.

Each case is a raw request stream (``.http``, escaped: see ``decode_escaped``) and a
sidecar ``.json`` with the verdict RFC 9112 and the gate require, plus the CVE, advisory or
RFC section it comes from. Every case goes through the worker's incremental path whole,
per line, per byte, in seeded random pieces and as one byte then the rest; the five
verdicts must be identical and equal to the expected one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from muleteer.http import Limits

from .conftest import (
    CORPUS_DIR,
    Case,
    Req,
    Verdict,
    case_seed,
    decode_escaped,
    drive,
    load_corpus,
    split_patterns,
    verdict_all_splits,
)

CASES = load_corpus()

# Every advisory of research/reliability.md 1.2 that concerns parsing a request, and every
# gate rule that the parser enforces (S11-S13 are response and environ rules: suite B/F).
REQUIRED_CITES = [
    "CVE-2019-16785",
    "CVE-2019-16786",
    "CVE-2019-16789",
    "CVE-2019-16792",
    "CVE-2020-5236",
    "CVE-2022-24761",
    "GHSA-9298-4cf8-g4wj",
    "CVE-2024-1135",
    "CVE-2024-6827",
    "gunicorn issue #2176",
    "#3047",
    "#3104",
    "#3144",
    "#3382",
    "forbidden trailers",
    "CVE-2022-32213",
    "CVE-2022-32214",
    "CVE-2022-32215",
    "CVE-2023-30589",
    "CVE-2024-27982",
    "CVE-2025-23167",
    "CVE-2025-43859",
    "h11 0.15.0",
    "CVE-2023-39326",
    "uWSGI issue #2336",
    "CVE-2022-29361",
    *(f"gate G{i}" for i in range(1, 8)),
    *(f"gate S{i}" for i in range(1, 11)),
]
# RFC 9112 sections 2-7 (and 9.3/9.6 for persistence) with a testable MUST or rule.
REQUIRED_SECTIONS = [
    "RFC 9112 2.2",
    "RFC 9112 2.3",
    "RFC 9112 3",
    "RFC 9112 3.2",
    "RFC 9112 3.2.2",
    "RFC 9112 3.2.3",
    "RFC 9112 3.2.4",
    "RFC 9112 5",
    "RFC 9112 5.1",
    "RFC 9112 5.2",
    "RFC 9112 6.1",
    "RFC 9112 6.3",
    "RFC 9112 7.1",
    "RFC 9112 7.1.1",
    "RFC 9112 7.1.2",
    "RFC 9112 9.3",
    "RFC 9112 9.6",
]


def expected_verdict(expect: dict[str, Any]) -> Verdict:
    requests = tuple(
        Req(
            r["method"],
            r["target"],
            r["version"],
            tuple((name, value) for name, value in r["headers"]),
            r["body"].encode("latin-1"),
            r["keep_alive"],
        )
        for r in expect["requests"]
    )
    return Verdict(requests, expect["end"], expect["status"])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_verdict_under_five_splits(case: Case) -> None:
    got = verdict_all_splits(case.data, case.limits, case_seed(case.name))
    assert got == expected_verdict(case.expect), f"{case.about} ({case.cite})"


def test_corpus_size_and_citations(record_figure: Callable[..., None]) -> None:
    assert len(CASES) >= 80
    ends = Counter(c.expect["end"] for c in CASES)
    record_figure("A2", "own corpus cases, each fed whole and split 5 ways", len(CASES))
    record_figure("A2", "expected ends", ", ".join(f"{k} {v}" for k, v in sorted(ends.items())))
    cites = " | ".join(c.cite for c in CASES)
    missing = [c for c in REQUIRED_CITES if c not in cites]
    assert not missing, f"no corpus case cites {missing}"
    missing = [s for s in REQUIRED_SECTIONS if not re.search(re.escape(s) + r"(?![.\d])", cites)]
    assert not missing, f"no corpus case cites {missing}"
    for case in CASES:
        assert re.search(r"CVE-\d|GHSA-|RFC \d|gate [GS]\d|issue #|report|news", case.cite), (
            case.name
        )
        assert case.about


def test_corpus_covers_both_verdicts_and_every_status() -> None:
    ends = {c.expect["end"] for c in CASES}
    assert ends == {"clean", "closed", "incomplete", "error"}
    statuses = {c.expect["status"] for c in CASES if c.expect["end"] == "error"}
    assert statuses == {400, 413, 414, 431, 501, 505}


def test_corpus_files_are_paired_and_decodable() -> None:
    https = {p.stem for p in CORPUS_DIR.glob("*.http")}
    jsons = {p.stem for p in CORPUS_DIR.glob("*.json")}
    assert https == jsons
    assert len({c.data for c in CASES}) == len(CASES), "two cases with the same bytes"


def test_escape_format() -> None:
    assert decode_escaped(b"GET / HTTP/1.1\\r\\n\nHost: a\\t\\0\\x7f\\\\\\r\\n\n") == (
        b"GET / HTTP/1.1\r\nHost: a\t\x00\x7f\\\r\n"
    )
    with pytest.raises(ValueError):
        decode_escaped(b"bad \\q escape")


def test_split_patterns_are_five_real_splits() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    patterns = split_patterns(data, 7)
    assert set(patterns) == {"whole", "lines", "bytes", "random", "one_then_rest"}
    assert [len(p) for p in patterns.values()] == [1, 3, len(data), len(patterns["random"]), 2]
    assert len(patterns["random"]) > 2
    assert all(b"".join(p) == data for p in patterns.values())


def test_driver_detects_a_split_dependent_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The five-split check can fail: a parser that only errs on per-byte input is caught."""
    from . import conftest

    real = conftest.scan_head

    def flaky(buf: bytes | bytearray, limits: Limits) -> int:
        if len(buf) == 1 and buf[:1] == b"G":
            raise conftest.HttpError(400, "fake")
        return real(buf, limits)

    monkeypatch.setattr(conftest, "scan_head", flaky)
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert drive([data], Limits()).end == "clean"
    assert drive([data[:1], data[1:]], Limits()).status == 400
    with pytest.raises(AssertionError, match="split"):
        verdict_all_splits(data, Limits())
