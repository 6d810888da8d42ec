"""Prometheus metrics at ``/metrics``: a custom collector over the stats snapshot.

The exposition format comes from ``prometheus_client`` (``generate_latest``), so names,
escaping and types are what every Prometheus user already parses; nothing here formats
text by hand. Counters follow the conventions (``_total``), labels name the slot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class MuleteerCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        stats = self._snapshot()
        yield from self._workers(stats["workers"])
        yield from self._mules(stats["mules"])
        yield from self._queues(stats["queues"])
        yield from self._signals(stats["signals"])
        listen = GaugeMetricFamily(
            "muleteer_listen_queue", "connections waiting to be accepted", labels=["socket"]
        )
        for sock in stats["sockets"]:
            listen.add_metric([sock["name"]], sock["queue"])
        yield listen

    @staticmethod
    def _workers(workers: list[dict[str, Any]]) -> Iterator[Metric]:
        counters = {
            "requests": ("muleteer_requests", "requests served by the worker slot"),
            "exceptions": ("muleteer_exceptions", "requests that raised in the app"),
            "harakiri_count": ("muleteer_harakiri", "requests killed by harakiri"),
            "signals": ("muleteer_worker_signals", "signal handlers run by the worker"),
            "tx": ("muleteer_tx_bytes", "response bytes sent"),
            "respawn_count": ("muleteer_worker_spawns", "times the worker slot was spawned"),
        }
        for key, (name, doc) in counters.items():
            family = CounterMetricFamily(name, doc, labels=["worker"])
            for w in workers:
                family.add_metric([str(w["id"])], w[key])
            yield family
        gauges = {
            "rss": ("muleteer_worker_rss_bytes", "resident memory of the worker"),
            "avg_rt": ("muleteer_worker_avg_response_microseconds", "recent response time"),
        }
        for key, (name, doc) in gauges.items():
            gauge = GaugeMetricFamily(name, doc, labels=["worker"])
            for w in workers:
                gauge.add_metric([str(w["id"])], w[key])
            yield gauge
        busy = GaugeMetricFamily(
            "muleteer_worker_busy", "1 while the worker runs a request", labels=["worker"]
        )
        for w in workers:
            busy.add_metric(
                [str(w["id"])], 1 if w["status"] == "busy" or w["status"].startswith("sig") else 0
            )
        yield busy

    @staticmethod
    def _mules(mules: list[dict[str, Any]]) -> Iterator[Metric]:
        counters = {
            "messages_received": ("muleteer_mule_messages_received", "messages taken by the mule"),
            "messages_rejected": (
                "muleteer_mule_messages_rejected",
                "messages to the mule's own queue refused at send (full)",
            ),
            "messages_unhandled": (
                "muleteer_mule_messages_unhandled",
                "messages a signal-only mule had no hook for",
            ),
            "signals": ("muleteer_mule_signals", "signal handlers run by the mule"),
            "respawn_count": ("muleteer_mule_spawns", "times the mule slot was spawned"),
            "harakiri_count": ("muleteer_mule_harakiri", "mules killed by harakiri"),
        }
        for key, (name, doc) in counters.items():
            family = CounterMetricFamily(name, doc, labels=["mule"])
            for m in mules:
                family.add_metric([str(m["id"])], m[key])
            yield family
        depth = GaugeMetricFamily(
            "muleteer_mule_queue_depth", "messages waiting in the mule's own queue", labels=["mule"]
        )
        busy = GaugeMetricFamily(
            "muleteer_mule_busy", "1 while the mule runs a handler", labels=["mule"]
        )
        for m in mules:
            depth.add_metric([str(m["id"])], m["queue"])
            busy.add_metric([str(m["id"])], 1 if m["status"] == "busy" else 0)
        yield depth
        yield busy

    @staticmethod
    def _queues(queues: list[dict[str, Any]]) -> Iterator[Metric]:
        for key in ("sent", "received", "rejected"):
            family = CounterMetricFamily(
                f"muleteer_queue_messages_{key}", f"mule messages {key} per queue", labels=["queue"]
            )
            for q in queues:
                family.add_metric([q["name"]], q[key])
            yield family
        depth = GaugeMetricFamily(
            "muleteer_queue_depth", "messages waiting per queue", labels=["queue"]
        )
        for q in queues:
            depth.add_metric([q["name"]], q["depth"])
        yield depth

    @staticmethod
    def _signals(signals: list[dict[str, Any]]) -> Iterator[Metric]:
        for key in ("raised", "delivered", "dropped"):
            family = CounterMetricFamily(
                f"muleteer_signals_{key}", f"uWSGI signals {key}", labels=["signum"]
            )
            for s in signals:
                family.add_metric([str(s["num"])], s[key])
            yield family
        held = GaugeMetricFamily(
            "muleteer_signals_held",
            "signals held by the master until their channel drains",
            labels=["signum"],
        )
        for s in signals:
            held.add_metric([str(s["num"])], s["held"])
        yield held


def exposition(snapshot: Callable[[], dict[str, Any]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MuleteerCollector(snapshot))
    return bytes(generate_latest(registry))
