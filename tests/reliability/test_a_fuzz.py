"""A5: atheris on the two parsers, 60 s each (30 min each in the nightly variants).

atheris is installed at test time into a throwaway directory; the targets are
``fuzz/http_head.py`` and ``fuzz/uwsgi_packet.py``, seeded from the A2 corpus (and a few
uwsgi packets). libFuzzer runs with ``-timeout=1 -rss_limit_mb=512`` and a fixed seed; any
crash, timeout or memory blow-up leaves an artifact and fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from muleteer.uwsgi_proto import encode_packet

from .conftest import ROOT, load_corpus


def http_seeds() -> list[bytes]:
    # One control byte (limits and read sizes, see fuzz/http_head.py), then the stream.
    return [bytes([i % 256]) + case.data for i, case in enumerate(load_corpus())]


def uwsgi_seeds() -> list[bytes]:
    nginx = {
        "QUERY_STRING": "a=1",
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "5",
        "REQUEST_URI": "/x?a=1",
        "PATH_INFO": "/x",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "example.com",
    }
    return [
        encode_packet(nginx) + b"hello",
        encode_packet({"REQUEST_METHOD": "GET"}),
        encode_packet({"REQUEST_METHOD": "GET", "CONTENT_LENGTH": "1"}),
        encode_packet({"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1\r\nX: y"}),
        encode_packet({"REQUEST_METHOD": "GET"}, modifier1=5),
    ]


SEEDS = {"http_head": http_seeds, "uwsgi_packet": uwsgi_seeds}


def run_target(target: str, seconds: int, site: Path, work: Path) -> dict[str, int]:
    corpus, artifacts = work / "corpus", work / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    for i, seed in enumerate(SEEDS[target]()):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    command = [
        sys.executable,
        str(ROOT / "fuzz" / f"{target}.py"),
        f"-max_total_time={seconds}",
        "-timeout=1",
        "-rss_limit_mb=512",
        "-seed=1",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    found = sorted(artifacts.iterdir())
    detail = "\n".join(proc.stderr.splitlines()[-40:])
    for path in found[:3]:
        detail += f"\n{path.name}: {path.read_bytes()[:500]!r}"
    assert proc.returncode == 0 and not found, f"{target} failed (rc {proc.returncode}):\n{detail}"
    stats = {k: int(v) for k, v in re.findall(r"stat::(\w+):\s+(\d+)", proc.stderr)}
    assert stats.get("number_of_executed_units", 0) > 1000, detail
    stats["artifacts"] = len(found)
    print(
        f"{target}: {stats['number_of_executed_units']} executions in {seconds} s, "
        f"{stats['average_exec_per_sec']}/s, {stats.get('new_units_added', 0)} new units, "
        f"peak RSS {stats.get('peak_rss_mb', 0)} MB"
    )
    return stats


@pytest.mark.timeout(240)
@pytest.mark.parametrize("target", sorted(SEEDS))
def test_fuzz_60s(
    target: str, atheris_site: Path, tmp_path: Path, record_figure: Callable[..., None]
) -> None:
    stats = run_target(target, 60, atheris_site, tmp_path)
    record_figure(
        "A5",
        f"atheris {target}, 60 s: executions (per s), crash / timeout / OOM artifacts",
        f"{stats['number_of_executed_units']} ({stats['average_exec_per_sec']}/s), "
        f"{stats['artifacts']}",
    )


@pytest.mark.nightly
@pytest.mark.timeout(2100)
@pytest.mark.parametrize("target", sorted(SEEDS))
def test_fuzz_30min(target: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # Half an hour each: only when nightly tests are asked for (-m nightly), not whenever
    # the marker is merely left unfiltered.
    markexpr = request.config.getoption("markexpr") or ""
    if "nightly" not in markexpr or "not nightly" in markexpr:
        pytest.skip("30-minute fuzz run: select it with -m nightly")
    run_target(target, 1800, request.getfixturevalue("atheris_site"), tmp_path)


def test_seeds_are_accepted_by_the_targets(atheris_site: Path, tmp_path: Path) -> None:
    """Each target runs its seeds once (libFuzzer with -runs=0) without failing, and a
    target that breaks is seen: a seed dir with an input that makes the target fail."""
    for target in sorted(SEEDS):
        stats = run_target_runs(target, atheris_site, tmp_path / target, SEEDS[target]())
        assert stats.returncode == 0, stats.stderr[-2000:]
    broken = tmp_path / "broken.py"
    broken.write_text(
        "import sys, atheris\n"
        "def one(data):\n"
        "    if data.startswith(b'GET'):\n"
        "        raise KeyError('escaped')\n"
        "atheris.Setup(sys.argv, one)\n"
        "atheris.Fuzz()\n"
    )
    proc = run_target_runs(str(broken), atheris_site, tmp_path / "broken", [b"GET / HTTP/1.1"])
    assert proc.returncode != 0
    assert "KeyError" in proc.stdout + proc.stderr
    assert list((tmp_path / "broken").glob("crash-*"))


def run_target_runs(
    target: str, site: Path, work: Path, seeds: list[bytes]
) -> subprocess.CompletedProcess[str]:
    work.mkdir(parents=True)
    for i, seed in enumerate(seeds):
        (work / f"seed-{i:03d}").write_bytes(seed)
    script = target if target.endswith(".py") else str(ROOT / "fuzz" / f"{target}.py")
    return subprocess.run(
        [sys.executable, script, "-runs=0", "-timeout=1", f"-artifact_prefix={work}/", str(work)],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
