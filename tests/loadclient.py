"""An in-repo load client that records every request, so failures are counted exactly.

wrk's error counts are not reliable against servers that close connections (it counts a
close without ``Connection: close`` as a read error), so the reliability tests use this:
an asyncio client with N concurrent loops, each sending GETs either on a new connection
per request (``keepalive=False``) or on one reused connection, and recording
(start, end, status or error) for each.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Outcome:
    start: float
    end: float
    status: int  # 0 when the request failed
    error: str = ""
    body: bytes = b""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.failed:
            key = outcome.error or f"status {outcome.status}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def latency_quantile(self, q: float) -> float:
        values = sorted(o.end - o.start for o in self.ok)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def p50(self) -> float:
        values = [o.end - o.start for o in self.ok]
        return statistics.median(values) if values else float("nan")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, the server will close) of one response: Content-Length, chunked
    or read to the close."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value.strip())
        elif lname == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif lname == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size + 2)
            del body[-2:]
        return status, bytes(body), close
    if length is not None:
        return status, await reader.readexactly(length), close
    return status, await reader.read(), True


async def _loop(
    host: str,
    port: int,
    path: str,
    keepalive: bool,
    stop_at: float,
    limit: list[int],
    result: LoadResult,
    timeout: float,
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    header = b"" if keepalive else b"Connection: close\r\n"
    request = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), host.encode(), header)
    while time.monotonic() < stop_at and limit[0] != 0:
        if limit[0] > 0:
            limit[0] -= 1
        start = time.monotonic()
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), timeout
                )
            writer.write(request)
            status, body, close = await asyncio.wait_for(read_response(reader), timeout)
            result.outcomes.append(Outcome(start, time.monotonic(), status, body=body))
            if close or not keepalive:
                writer.close()
                writer, reader = None, None
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            result.outcomes.append(
                Outcome(start, time.monotonic(), 0, f"{type(exc).__name__}: {exc}"[:120])
            )
            if writer is not None:
                writer.close()
            writer, reader = None, None
    if writer is not None:
        writer.close()


def run_load(
    port: int,
    duration: float = 5.0,
    concurrency: int = 8,
    keepalive: bool = False,
    path: str = "/",
    host: str = "127.0.0.1",
    requests: int = -1,
    timeout: float = 10.0,
) -> LoadResult:
    """Run the load for `duration` seconds (or `requests` requests) and return every outcome."""
    result = LoadResult()
    limit = [requests]

    async def main() -> None:
        stop_at = time.monotonic() + duration
        await asyncio.gather(
            *(
                _loop(host, port, path, keepalive, stop_at, limit, result, timeout)
                for _ in range(concurrency)
            )
        )

    asyncio.run(main())
    return result


class BackgroundLoad:
    """Run :func:`run_load` in a thread while the test does something else."""

    def __init__(self, port: int, **kw: object) -> None:
        self.result: LoadResult | None = None
        self._thread = threading.Thread(target=self._run, args=(port,), kwargs=kw, daemon=True)

    def _run(self, port: int, **kw: object) -> None:
        self.result = run_load(port, **kw)  # type: ignore[arg-type]

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(120)

    def join(self) -> LoadResult:
        self._thread.join(120)
        assert self.result is not None
        return self.result
