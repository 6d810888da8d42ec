"""Signal targets, the master's routing table and delivery that never drops silently."""

from __future__ import annotations

import socket

import pytest

from muleteer.signals import Delivery, Kind, SignalTable, parse_target, target_problem
from muleteer.slots import MIN_LIFETIME, Slot, SlotState

FARMS = ["jobs", "mail"]


@pytest.mark.parametrize(
    ("text", "kind", "index", "farm"),
    [
        ("", Kind.ANY_WORKER, 0, ""),
        ("worker", Kind.ANY_WORKER, 0, ""),
        ("worker0", Kind.ANY_WORKER, 0, ""),
        ("workers", Kind.WORKERS, 0, ""),
        ("active-workers", Kind.ACTIVE_WORKERS, 0, ""),
        ("worker3", Kind.WORKER, 3, ""),
        ("workerx", Kind.INVALID, 0, ""),
        ("mule", Kind.ANY_MULE, 0, ""),
        ("mule0", Kind.ANY_MULE, 0, ""),
        ("mules", Kind.MULES, 0, ""),
        ("mule2", Kind.MULE, 2, ""),
        ("farm_jobs", Kind.FARM, 0, "jobs"),
        ("farm2", Kind.FARM, 0, "mail"),
        ("farm3", Kind.INVALID, 0, ""),
        ("jobs", Kind.FARM, 0, "jobs"),  # a bare farm name (muleteer accepts it too)
        ("spooler", Kind.SPOOLER, 0, ""),
        ("subscribed", Kind.SUBSCRIBED, 0, ""),
        ("cluster", Kind.INVALID, 0, ""),
    ],
)
def test_parse_target(text: str, kind: Kind, index: int, farm: str) -> None:
    target = parse_target(text, FARMS)
    assert (target.kind, target.index, target.farm) == (kind, index, farm)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("worker5", "2 worker(s) configured"),
        ("mule4", "3 mule(s) configured"),
        ("farm_nope", "unknown farm: nope"),
        ("spooler", "no spooler"),
        ("cluster", "invalid signal target"),
    ],
)
def test_target_problems(text: str, problem: str) -> None:
    assert problem in (target_problem(parse_target(text, FARMS), 2, 3, FARMS) or "")


def test_no_mules_means_mule_targets_are_a_problem() -> None:
    assert "no mule" in (target_problem(parse_target("mule", []), 2, 0, []) or "")


def table() -> SignalTable:
    return SignalTable(workers=2, mules=3, farms=FARMS)


def route(t: SignalTable, num: int, active: list[int] | None = None) -> list[str]:
    return t.route(num, lambda: active if active is not None else [1, 2])


def test_routes_of_master_registrations() -> None:
    t = table()
    for num, target in enumerate(
        ["", "workers", "worker2", "mule", "mules", "mule3", "farm_mail", "active-workers"]
    ):
        t.register(num, target, "master")
    assert route(t, 0) == ["any worker"]
    assert route(t, 1) == ["worker 1", "worker 2"]
    assert route(t, 2) == ["worker 2"]
    assert route(t, 3) == ["any mule"]
    assert route(t, 4) == ["mule 1", "mule 2", "mule 3"]
    assert route(t, 5) == ["mule 3"]
    assert route(t, 6) == ["farm mail"]
    assert route(t, 7, active=[2]) == ["worker 2"]
    assert t.entries[4].raised == 1


def test_unregistered_signals_go_to_any_worker_and_are_counted() -> None:
    t = table()
    assert route(t, 99) == ["any worker"]
    assert t.unregistered_raised == {99: 1}


def test_invalid_targets_route_nowhere() -> None:
    t = table()
    t.register(9, "mule7", "master")
    assert route(t, 9) == []


def test_registration_in_a_mule_targets_that_mule() -> None:
    # DESIGN deviation 6: the handler lives in the mule that registered it.
    t = table()
    t.register(20, "mule", "mule 2")
    assert [route(t, 20) for _ in range(3)] == [["mule 2"]] * 3
    t.register(21, "mules", "mule 1")
    t.register(21, "mules", "mule 3")
    assert route(t, 21) == ["mule 1", "mule 3"]


def test_registration_in_some_workers_rotates_among_them() -> None:
    t = SignalTable(workers=3, mules=0, farms=[])
    t.register(30, "", "worker 1")
    t.register(30, "", "worker 3")
    seen = {route(t, 30, [1, 2, 3])[0] for _ in range(4)}
    assert seen == {"worker 1", "worker 3"}
    t.register(31, "", "worker 1")
    t.register(31, "", "worker 2")
    t.register(31, "", "worker 3")
    assert route(t, 31) == ["any worker"]  # lazy-apps: every worker has it


def test_master_registration_keeps_the_shared_channel() -> None:
    t = table()
    t.register(40, "mule", "master")
    t.register(40, "mule", "mule 1")  # the same handler inherited and re-declared
    assert route(t, 40) == ["any mule"]


def test_late_registration_with_another_target_replaces_it() -> None:
    t = table()
    t.register(41, "worker1", "master")
    t.register(41, "mule2", "worker 1")
    assert route(t, 41) == ["mule 2"]


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    for end in (a, b):
        end.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    yield a, b
    a.close()
    b.close()


def test_delivery_holds_what_does_not_fit_and_delivers_it_later(pair) -> None:
    send, recv = pair
    drops: list[tuple[str, int]] = []
    delivery = Delivery(
        {"mule 1": send}, max_held=1_000_000, on_drop=lambda n, s: drops.append((n, s))
    )
    for i in range(200_000):
        delivery.send("mule 1", i % 256)
    assert delivery.held_count("mule 1") > 0  # the socket buffer could not take them all
    received = bytearray()
    while len(received) < 200_000:
        try:
            received += recv.recv(65536)
        except BlockingIOError:
            assert delivery.held_count("mule 1") > 0, "bytes lost"
            delivery.flush("mule 1")
    assert list(received[:512]) == [i % 256 for i in range(512)]  # order kept
    assert delivery.held_count("mule 1") == 0 and drops == []
    assert delivery.delivered["mule 1"] == 200_000


def test_delivery_drops_past_the_bound_and_counts(pair) -> None:
    send, _recv = pair
    drops: list[tuple[str, int]] = []
    delivery = Delivery({"mule 1": send}, max_held=10, on_drop=lambda n, s: drops.append((n, s)))
    for _ in range(100_000):
        delivery.send("mule 1", 7)
    held = delivery.held_count("mule 1")
    assert held == 10
    dropped = delivery.dropped["mule 1"]
    assert dropped == len(drops) > 0
    assert delivery.delivered["mule 1"] + held + dropped == 100_000
    assert delivery.dropped_by_num == {7: dropped}


# -- slots and back-off -------------------------------------------------------------------


def test_slot_back_off_grows_and_resets() -> None:
    slot = Slot("mule", 1)
    now = 100.0
    delays = []
    for _ in range(8):
        slot.spawned(1234, now)
        delays.append(slot.exited(now + 0.01, cap=10.0))
        now = slot.respawn_at
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]
    slot.spawned(1, now)
    assert slot.exited(now + MIN_LIFETIME, cap=10.0) == 0.0  # a long life resets it
    assert slot.failures == 0 and slot.respawns == 9


def test_requested_stops_are_not_failures() -> None:
    slot = Slot("worker", 2)
    slot.spawned(1, 10.0)
    slot.stop(10.0, 60.0, "max-requests", respawn=True)
    assert slot.state is SlotState.STOPPING and slot.mercy_deadline == 70.0
    assert slot.exited(10.1, cap=10.0) == 0.0
    assert slot.state is SlotState.EMPTY and slot.due(10.1)


def test_stop_without_respawn_retires() -> None:
    slot = Slot("worker", 1)
    slot.spawned(1, 0.0)
    slot.stop(0.0, 5.0, "shutdown", respawn=False)
    assert slot.exited(1.0, cap=10.0) == float("inf")
    assert slot.state is SlotState.RETIRED and not slot.due(100.0)
