#!/usr/bin/env python3
"""Turn one bench run (a results directory) into the targets table and a chart.

    python3 bench/report.py results/run-<ts>          # prints markdown, writes report.md
                                                        # and chart.png (needs matplotlib)

Every figure is a median over the run's repetitions, and every ratio compares servers
measured in the same run (absolute numbers on shared machines drift between runs). The
targets are those of DESIGN.md section 7.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path


def _load(directory: Path, name: str) -> dict:
    path = directory / name
    return json.loads(path.read_text()) if path.exists() else {}


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else float("nan")


def _fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


class Report:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.http = _load(directory, "http.json").get("aggregate", {})
        self.mulemsg = _load(directory, "mulemsg.json").get("runs", [])
        self.signal = _load(directory, "signal.json").get("results", [])
        self.mem = _load(directory, "mem_startup.json").get("runs", [])
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        # (label, muleteer, anchor, target met)
        self.chart: list[tuple[str, float, float, bool | None]] = []

    def rps(self, server: str, conns: int, mode: str) -> float:
        return self.http.get(f"{server}|c={conns}|{mode}", {}).get("rps_median", float("nan"))

    def add(self, what: str, anchor: str, mine: str, theirs: str, ratio: str, target: str,
            met: bool | None) -> None:
        verdict = "n/a" if met is None else ("yes" if met else "**no**")
        self.rows.append((what, anchor, mine, theirs, f"{ratio} (target {target})", verdict))

    def ratio_row(self, what: str, anchor_name: str, mine: float, theirs: float,
                  target: float, higher_is_better: bool = True, unit: str = "") -> None:
        ratio = mine / theirs if theirs and not math.isnan(theirs) else float("nan")
        met = None if math.isnan(ratio) else (ratio >= target if higher_is_better else ratio <= target)
        sign = ">=" if higher_is_better else "<="
        self.add(what, anchor_name, _fmt(mine) + unit, _fmt(theirs) + unit,
                 f"{_fmt(ratio, 2)}x", f"{sign} {target}x", met)
        self.chart.append((f"{what} (vs {anchor_name})", mine, theirs, met))

    def http_rows(self) -> None:
        if not self.http:
            return
        self.ratio_row("hello req/s, keep-alive, 16 conns", "uWSGI --http11-socket",
                       self.rps("muleteer", 16, "keepalive"), self.rps("uwsgi-http11", 16, "keepalive"), 1.0)
        for conns in (2, 16):
            self.ratio_row(f"hello req/s, Connection: close, {conns} conns", "uWSGI --http-socket",
                           self.rps("muleteer", conns, "close"), self.rps("uwsgi", conns, "close"), 1.0)
            self.ratio_row(f"hello req/s, Connection: close, {conns} conns", "gunicorn sync",
                           self.rps("muleteer", conns, "close"), self.rps("gunicorn-sync", conns, "close"),
                           3.0)
        cell = self.http.get("muleteer|c=16|keepalive", {})
        anchor = self.http.get("uwsgi-http11|c=16|keepalive", {})
        if cell:
            fails = cell.get("probe_fail", 0)
            self.add("new connections while 16 keep-alive conns are held", "uWSGI --http11-socket",
                     f"{fails} failed of {fails + cell.get('probe_ok', 0)}",
                     f"{anchor.get('probe_fail', 'n/a')} failed" if anchor else "n/a",
                     "-", "0 failures", fails == 0)
        self.ratio_row("behind nginx uwsgi_pass, keep-alive, 16 conns", "nginx -> uWSGI --socket",
                       self.rps("nginx-muleteer", 16, "keepalive"), self.rps("nginx-uwsgi", 16, "keepalive"),
                       0.9)

    def mulemsg_rows(self) -> None:
        def runs(server: str, scenario: str) -> list[dict]:
            return [r for r in self.mulemsg if r.get("server") == server and r.get("scenario") == scenario]

        mine = runs("muleteer", "fast-lossless")
        theirs = runs("uwsgi", "fast-lossless")
        if mine and theirs:
            self.ratio_row("mule_msg 100-byte msgs/s, worker -> mule, lossless", "uWSGI (resend on False)",
                           _median([r["e2e_rate"] for r in mine]), _median([r["e2e_rate"] for r in theirs]), 1.0)
            lost = sum(r.get("lost", 0) for r in mine)
            self.add("mule_msg lost (lossless scenario)", "uWSGI", str(lost),
                     str(sum(r.get("lost", 0) for r in theirs)), "-", "0 lost", lost == 0)
        drop_mine, drop_theirs = runs("muleteer", "fast-drop"), runs("uwsgi", "fast-drop")
        if drop_mine and drop_theirs:
            invisible = sum(r.get("lost", 0) - r.get("ret_false", 0) for r in drop_mine)
            self.add("fire-and-forget burst: losses not reported to the sender", "uWSGI",
                     str(invisible), str(sum(r.get("lost", 0) - r.get("ret_false", 0) for r in drop_theirs)),
                     "-", "0 unreported", invisible == 0)

    def signal_rows(self) -> None:
        def pick(server: str, scenario: str) -> list[dict]:
            return [r for r in self.signal if r.get("server") == server and r.get("scenario") == scenario]

        for key in ("p50_us", "p99_us"):
            mine, theirs = pick("muleteer", "latency-plain"), pick("uwsgi", "latency-plain")
            if mine and theirs:
                self.ratio_row(f"signal raise -> handler in a mule, {key[:3]}", "uWSGI",
                               _median([r[key] for r in mine]), _median([r[key] for r in theirs]), 1.0,
                               higher_is_better=False, unit=" us")
        burst = pick("muleteer", "burst")
        if burst:
            lost = sum(r["raised"] - r["handled"] for r in burst)
            anchor = pick("uwsgi", "burst")
            self.add("signal burst of 2000 to one mule: lost", "uWSGI", str(lost),
                     str(sum(r["raised"] - r["handled"] for r in anchor)) if anchor else "n/a",
                     "-", "0 lost", lost == 0)
        timer = pick("muleteer", "timer")
        if timer:
            jitter = _median([r["abs_dev_p99_ms"] for r in timer])
            anchor = _median([r["abs_dev_p99_ms"] for r in pick("uwsgi", "timer")])
            self.add("timer jitter p99", "uWSGI", f"{_fmt(jitter, 3)} ms", f"{_fmt(anchor, 3)} ms", "-",
                     "<= 1 ms", jitter <= 1.0)
        filemon = pick("muleteer", "filemon")
        if filemon:
            p50 = _median([r["p50_us"] for r in filemon]) / 1000
            anchor = _median([r["p50_us"] for r in pick("uwsgi", "filemon")]) / 1000
            self.add("file change -> handler p50", "uWSGI (inotify)", f"{_fmt(p50, 3)} ms",
                     f"{_fmt(anchor, 3)} ms", "-", "<= 1 ms", p50 <= 1.0)

    def memory_rows(self) -> None:
        def total_pss(server: str) -> float:
            totals = [sum(p["pss"] for p in r["idle"]) / 1024 for r in self.mem if r.get("server") == server
                      and r.get("idle")]
            return _median(totals)

        mine, theirs = total_pss("muleteer"), total_pss("uwsgi")
        if not math.isnan(mine):
            self.ratio_row("total PSS MiB, master + 2 workers + 1 mule (idle)", "uWSGI", mine, theirs, 1.0,
                           higher_is_better=False, unit=" MiB")
            gunicorn = total_pss("gunicorn-sync")
            if not math.isnan(gunicorn):
                self.add("total PSS MiB (gunicorn sync, master + 2 workers)", "gunicorn sync",
                         _fmt(mine, 1), _fmt(gunicorn, 1), f"{_fmt(mine / gunicorn, 2)}x", "-", None)
            start_mine = _median([r["ready_s"] for r in self.mem if r.get("server") == "muleteer"]) * 1000
            start_theirs = _median([r["ready_s"] for r in self.mem if r.get("server") == "uwsgi"]) * 1000
            self.add("startup: spawn -> first 200", "uWSGI", f"{_fmt(start_mine)} ms",
                     f"{_fmt(start_theirs)} ms", f"{_fmt(start_mine / start_theirs, 2)}x", "-", None)

    def markdown(self) -> str:
        self.http_rows()
        self.mulemsg_rows()
        self.signal_rows()
        self.memory_rows()
        lines = ["| what | anchor | muleteer | anchor | ratio (target) | met |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        versions = self.dir / "versions.md"
        if versions.exists():
            lines += ["", versions.read_text().strip()]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> bool:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        items = [(label, mine / theirs, met) for label, mine, theirs, met in self.chart
                 if theirs and not math.isnan(theirs) and not math.isnan(mine)]
        if not items:
            return False
        fig, ax = plt.subplots(figsize=(11, 0.45 * len(items) + 1.5))
        labels = [label for label, _, _ in items]
        ratios = [ratio for _, ratio, _ in items]
        # Green when the row's target holds (for latency and memory that is a ratio <= 1).
        colors = ["#4c8" if met else "#e96" for _, _, met in items]
        ax.barh(range(len(items)), ratios, color=colors)
        ax.axvline(1.0, color="#333", linewidth=1)
        ax.set_yticks(range(len(items)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("muleteer / anchor, same run (green: target met; for latency and "
                      "memory, lower is better)")
        ax.set_title(f"muleteer vs anchors - {self.dir.resolve().name}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: report.py RESULTS_DIR\n")
        return 2
    directory = Path(argv[0])
    report = Report(directory)
    text = report.markdown()
    (directory / "report.md").write_text(text)
    sys.stdout.write(text)
    if report.plot(directory / "chart.png"):
        sys.stdout.write(f"\nchart: {directory / 'chart.png'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
