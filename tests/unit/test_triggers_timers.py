"""Timers and rb-timers of muleteer.triggers, stepped with a fake monotonic clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muleteer.triggers import (
    RbTimer,
    Timer,
    TriggerError,
    TriggerSet,
    check_signum,
    parse_timer_option,
)

# ------------------------------------------------------------------ timers


def test_first_firing_exactly_one_interval_after_start() -> None:
    ts = TriggerSet()
    timer = ts.add_timer(5, 2.0, now=100.0)
    assert timer.next_due == 102.0
    assert ts.next_deadline(100.0) == 102.0
    assert ts.due_timers(100.0) == []
    assert ts.due_timers(101.999999) == []
    assert ts.due_timers(102.0) == [5]
    assert timer.fired == 1
    assert timer.next_due == 104.0
    assert ts.due_timers(102.0) == []  # fired once for that expiry only


def test_phase_locked_over_1000_periods_despite_late_wakeups() -> None:
    ts = TriggerSet()
    start = 1000.0
    interval = 0.1  # not representable in binary: accumulation would drift
    timer = ts.add_timer(1, interval, now=start)
    for n in range(1, 1001):
        grid = start + n * interval
        assert timer.next_due == grid
        # the master wakes a little late each time, by up to 90% of a period
        late = grid + interval * ((n * 37) % 10) / 11
        assert ts.due_timers(late) == [1]
    assert timer.fired == 1000
    assert timer.overruns == 0
    assert timer.next_due == start + 1001 * interval
    assert abs(timer.next_due - (start + 100.1)) < 1e-9


def test_phase_locked_when_woken_exactly_on_the_grid() -> None:
    ts = TriggerSet()
    timer = ts.add_timer(1, 0.3, now=7.0)
    for n in range(1, 1001):
        assert ts.due_timers(7.0 + n * 0.3) == [1]
    assert timer.fired == 1000
    assert timer.overruns == 0
    assert timer.next_due == 7.0 + 1001 * 0.3


def test_long_stall_is_coalesced_into_one_firing_on_the_grid() -> None:
    ts = TriggerSet()
    timer = ts.add_timer(9, 1.0, now=0.0)
    assert ts.due_timers(10.5) == [9]  # expiries 1..10 missed: one firing
    assert timer.fired == 1
    assert timer.overruns == 9
    assert timer.next_due == 11.0  # still on the grid, not 11.5
    assert ts.due_timers(10.9) == []
    assert ts.due_timers(11.0) == [9]
    assert timer.overruns == 9


def test_stall_ending_exactly_on_a_grid_point() -> None:
    ts = TriggerSet()
    timer = ts.add_timer(9, 1.0, now=0.0)
    assert ts.due_timers(10.0) == [9]
    assert timer.next_due == 11.0
    assert timer.overruns == 9


def test_sub_second_interval_like_add_ms_timer() -> None:
    ts = TriggerSet()
    timer = ts.add_timer(3, 5 / 1000, now=50.0)  # add_ms_timer(3, 5)
    fired = 0
    for ms in range(1, 1001):
        fired += len(ts.due_timers(50.0 + ms / 1000))
    assert fired == 200
    assert timer.overruns == 0
    assert timer.next_due == pytest.approx(51.005)


def test_timer_constructed_directly_defaults_its_phase() -> None:
    timer = Timer(4, 2.0, next_due=12.0)
    assert timer.start == 10.0
    timer.expire(15.0)
    assert timer.next_due == 16.0
    assert timer.overruns == 1  # the expiry at 14 was coalesced


@pytest.mark.parametrize("interval", [0, 0.0, -1, -0.5, math.nan, math.inf, True, "5", None])
def test_timer_interval_must_be_positive(interval: object) -> None:
    ts = TriggerSet()
    with pytest.raises(TriggerError, match="interval"):
        ts.add_timer(1, interval, now=0.0)  # type: ignore[arg-type]
    with pytest.raises(TriggerError, match="interval"):
        ts.add_rb_timer(1, interval, 0, now=0.0)  # type: ignore[arg-type]
    assert ts.timers == [] and ts.rb_timers == [] and ts.next_deadline(0.0) is None


@pytest.mark.parametrize("signum", [-1, 256, 1000, True, 1.0, "1", None])
def test_signal_numbers_are_ints_0_to_255(signum: object) -> None:
    ts = TriggerSet()
    with pytest.raises(TriggerError, match="signal number"):
        ts.add_timer(signum, 1.0, now=0.0)  # type: ignore[arg-type]
    with pytest.raises(TriggerError, match="signal number"):
        ts.add_rb_timer(signum, 1.0, 0, now=0.0)  # type: ignore[arg-type]
    with pytest.raises(TriggerError, match="signal number"):
        check_signum(signum)


@pytest.mark.parametrize("signum", [0, 17, 255])
def test_signal_numbers_accepted(signum: int) -> None:
    assert check_signum(signum) == signum
    assert TriggerSet().add_timer(signum, 1.0, now=0.0).signum == signum


def test_two_hundred_timers_no_cap() -> None:
    ts = TriggerSet()
    for i in range(200):
        ts.add_timer(i % 256, 1.0 + i / 1000, now=0.0)
    assert len(ts.timers) == 200
    fired = ts.due_timers(2.0)
    assert len(fired) == 200
    assert fired == [i % 256 for i in range(200)]  # due-time order = registration order here
    assert ts.next_deadline(2.0) == pytest.approx(2.002)  # timer 1: 2 x 1.001


def test_timers_are_not_deduplicated() -> None:
    ts = TriggerSet()
    ts.add_timer(7, 1.0, now=0.0)
    ts.add_timer(7, 1.0, now=0.0)
    assert ts.due_timers(1.0) == [7, 7]


# ------------------------------------------------------------------ rb-timers


def test_rb_timer_first_fire_and_drift() -> None:
    ts = TriggerSet()
    rb = ts.add_rb_timer(11, 1.0, 0, now=0.0)
    assert rb.next_due == 1.0
    assert ts.due_timers(0.99) == []
    assert ts.due_timers(1.4) == [11]
    assert rb.next_due == 2.4  # re-armed from the firing time: lateness accumulates
    assert ts.due_timers(2.9) == [11]
    assert rb.next_due == pytest.approx(3.9)


def test_rb_timer_after_a_stall_fires_once_and_rearms_from_now() -> None:
    ts = TriggerSet()
    rb = ts.add_rb_timer(11, 2.0, 0, now=0.0)
    assert ts.due_timers(100.0) == [11]
    assert rb.fired == 1
    assert rb.next_due == 102.0


def test_rb_timer_iterations() -> None:
    ts = TriggerSet()
    rb = ts.add_rb_timer(12, 1.0, 3, now=0.0)
    assert [ts.due_timers(float(t)) for t in range(1, 6)] == [[12], [12], [12], [], []]
    assert rb.fired == 3
    assert rb.finished
    assert ts.next_deadline(5.0) is None
    assert ts.rb_timers == [rb]  # finished timers stay listed (stats)


def test_rb_timer_zero_iterations_is_forever() -> None:
    ts = TriggerSet()
    rb = ts.add_rb_timer(12, 0.5, 0, now=0.0)
    for n in range(1, 1001):
        assert ts.due_timers(n * 0.5) == [12]
    assert rb.fired == 1000
    assert not rb.finished


@pytest.mark.parametrize("iterations", [-1, 1.5, True, None])
def test_rb_timer_bad_iterations(iterations: object) -> None:
    with pytest.raises(TriggerError, match="iterations"):
        TriggerSet().add_rb_timer(1, 1.0, iterations, now=0.0)  # type: ignore[arg-type]


def test_rb_timer_direct_construction_validates() -> None:
    with pytest.raises(TriggerError):
        RbTimer(1, 0.0, 0, next_due=0.0)
    assert not RbTimer(1, 1.0, 0, next_due=1.0).finished


def test_two_hundred_rb_timers_no_cap() -> None:
    ts = TriggerSet()
    for i in range(200):
        ts.add_rb_timer(i, 1.0, 1, now=0.0)
    assert len(ts.due_timers(1.0)) == 200
    assert ts.next_deadline(1.0) is None


# ------------------------------------------------------------------ the set


def test_next_deadline_and_due_order_across_kinds() -> None:
    ts = TriggerSet()
    assert ts.next_deadline(0.0) is None
    ts.add_timer(1, 3.0, now=0.0)  # due 3
    ts.add_timer(2, 1.0, now=0.0)  # due 1
    ts.add_rb_timer(3, 2.0, 0, now=0.0)  # due 2
    assert ts.next_deadline(0.0) == 1.0
    assert ts.due_timers(3.5) == [2, 3, 1]
    # now: timer 2 at 4.0, rb 3 at 5.5, timer 1 at 6.0
    assert ts.next_deadline(3.5) == 4.0
    assert ts.due_timers(4.0) == [2]
    assert ts.next_deadline(4.0) == 5.0
    assert ts.due_timers(5.7) == [2, 3]


def test_ties_fire_in_registration_order() -> None:
    ts = TriggerSet()
    ts.add_rb_timer(30, 1.0, 0, now=0.0)
    ts.add_timer(10, 1.0, now=0.0)
    ts.add_timer(20, 0.5, now=0.5)
    assert ts.due_timers(1.0) == [30, 10, 20]


def test_next_deadline_may_be_in_the_past() -> None:
    ts = TriggerSet()
    ts.add_timer(1, 1.0, now=0.0)
    assert ts.next_deadline(50.0) == 1.0  # overdue: the caller does not sleep


def test_timer_moved_behind_the_sets_back_is_refiled() -> None:
    ts = TriggerSet()
    timer = ts.add_timer(1, 1.0, now=0.0)
    timer.next_due = 5.0
    assert ts.due_timers(1.0) == []
    assert ts.due_timers(5.0) == [1]


@settings(max_examples=200, deadline=None)
@given(
    interval=st.floats(min_value=0.001, max_value=100.0),
    start=st.floats(min_value=0.0, max_value=1e6),
    steps=st.lists(st.floats(min_value=0.0, max_value=50.0), min_size=1, max_size=40),
)
def test_timer_invariants(interval: float, start: float, steps: list[float]) -> None:
    ts = TriggerSet()
    timer = ts.add_timer(1, interval, now=start)
    now = start
    for step in steps:
        now += step * interval
        fired = ts.due_timers(now)
        assert len(fired) <= 1
        assert timer.next_due > now
        k = (timer.next_due - start) / interval
        assert k == pytest.approx(round(k), abs=1e-6)  # still on the grid
        # every grid point up to `now` was either fired or coalesced
        assert timer.fired + timer.overruns == round(k) - 1


# ------------------------------------------------------------------ option values


def test_parse_timer_option() -> None:
    assert parse_timer_option("17 5") == (17, 5.0)
    assert parse_timer_option("  0   0.25 ") == (0, 0.25)
    assert parse_timer_option("255 3600", rb=True) == (255, 3600.0)


@pytest.mark.parametrize("value", ["17", "", "17 5 9", "a 5", "17 b", "17,5"])
def test_parse_timer_option_syntax(value: str) -> None:
    with pytest.raises(TriggerError) as info:
        parse_timer_option(value)
    assert str(info.value) == "invalid signal timer syntax, must be: <signal> <seconds>"
    with pytest.raises(TriggerError) as info:
        parse_timer_option(value, rb=True)
    assert str(info.value) == "invalid redblack signal timer syntax, must be: <signal> <seconds>"


@pytest.mark.parametrize(("value", "match"), [("256 5", "signal number"), ("-1 5", "signal")])
def test_parse_timer_option_bad_signal(value: str, match: str) -> None:
    with pytest.raises(TriggerError, match=match):
        parse_timer_option(value)


@pytest.mark.parametrize("value", ["17 0", "17 -5", "17 nan", "17 inf"])
def test_parse_timer_option_bad_interval(value: str) -> None:
    with pytest.raises(TriggerError, match="interval must be > 0"):
        parse_timer_option(value)
