"""uWSGI cron rules of muleteer.triggers: matching, firing, next_fire and option parsing."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muleteer.triggers import (
    Cron,
    TriggerError,
    TriggerSet,
    parse_cron2_option,
    parse_cron_option,
)

# 2024-02-04 was a Sunday; 2024-02-05 a Monday ... 2024-02-10 a Saturday.
SUNDAY = datetime.datetime(2024, 2, 4)


def at(
    year: int = 2024, month: int = 2, day: int = 4, hour: int = 0, minute: int = 0
) -> time.struct_time:
    return datetime.datetime(year, month, day, hour, minute).timetuple()


def cron(
    minute: int = -1, hour: int = -1, day: int = -1, month: int = -1, weekday: int = -1
) -> Cron:
    return Cron(1, minute, hour, day, month, weekday)


def matching(values: range, test: Callable[[int], bool]) -> list[int]:
    return [v for v in values if test(v)]


# ------------------------------------------------------------------ matching


def test_all_minus_one_matches_every_minute() -> None:
    c = cron()
    assert all(c.matches(at(hour=h, minute=m)) for h in range(24) for m in range(60))


def test_fixed_values_must_be_equal() -> None:
    c = cron(30, 3, 4, 2, -1)
    assert c.matches(at(2024, 2, 4, 3, 30))
    assert not c.matches(at(2024, 2, 4, 3, 31))
    assert not c.matches(at(2024, 2, 4, 4, 30))
    assert not c.matches(at(2024, 2, 5, 3, 30))
    assert not c.matches(at(2024, 3, 4, 3, 30))


def test_negative_minute_is_divisibility() -> None:
    assert matching(range(60), lambda m: cron(minute=-2).matches(at(minute=m))) == list(
        range(0, 60, 2)
    )
    # a non-divisor restarts every hour: 0, 7, ..., 56, then 0 again
    assert matching(range(60), lambda m: cron(minute=-7).matches(at(minute=m))) == list(
        range(0, 60, 7)
    )
    assert cron(minute=-7).matches(at(hour=1, minute=0))


def test_negative_hour_is_divisibility() -> None:
    assert matching(range(24), lambda h: cron(hour=-2).matches(at(hour=h))) == list(range(0, 24, 2))
    assert matching(range(24), lambda h: cron(hour=-5).matches(at(hour=h))) == [0, 5, 10, 15, 20]


def test_negative_day_counts_from_one_unlike_crontab() -> None:
    days = matching(range(1, 32), lambda d: cron(day=-2).matches(at(2024, 1, d)))
    assert days == list(range(2, 32, 2))  # 2, 4, 6 ... not crontab's 1, 3, 5
    days = matching(range(1, 32), lambda d: cron(day=-10).matches(at(2024, 1, d)))
    assert days == [10, 20, 30]


def test_negative_month_counts_from_one_unlike_crontab() -> None:
    months = matching(range(1, 13), lambda m: cron(month=-2).matches(at(2024, m, 1)))
    assert months == [2, 4, 6, 8, 10, 12]  # Feb, Apr, ... not Jan, Mar
    months = matching(range(1, 13), lambda m: cron(month=-3).matches(at(2024, m, 1)))
    assert months == [3, 6, 9, 12]


def test_weekday_zero_and_seven_are_sunday() -> None:
    for weekday in (0, 7):
        c = cron(weekday=weekday)
        hits = [d for d in range(7) if c.matches((SUNDAY + datetime.timedelta(days=d)).timetuple())]
        assert hits == [0]


def test_weekday_numbers_count_from_sunday() -> None:
    # struct_time says Monday = 0; uWSGI says Sunday = 0, Monday = 1 ... Saturday = 6
    for weekday in range(7):
        c = cron(weekday=weekday)
        hits = [d for d in range(7) if c.matches((SUNDAY + datetime.timedelta(days=d)).timetuple())]
        assert hits == [weekday]


def test_negative_weekday_is_divisibility_from_sunday() -> None:
    c = cron(weekday=-2)
    hits = [d for d in range(7) if c.matches((SUNDAY + datetime.timedelta(days=d)).timetuple())]
    assert hits == [0, 2, 4, 6]  # Sunday, Tuesday, Thursday, Saturday
    c = cron(weekday=-7)
    hits = [d for d in range(14) if c.matches((SUNDAY + datetime.timedelta(days=d)).timetuple())]
    assert hits == [0, 7]


def test_day_and_weekday_both_set_are_ored() -> None:
    c = cron(0, 0, 1, -1, 1)  # the 1st of the month, or any Monday
    assert c.matches(at(2024, 2, 1))  # Thursday the 1st
    assert c.matches(at(2024, 2, 5))  # Monday the 5th
    assert not c.matches(at(2024, 2, 6))  # Tuesday the 6th
    assert cron(0, 0, 31, -1, 0).matches(at(2024, 2, 4))  # Sunday, though no Feb 31


def test_day_or_weekday_negative_means_and() -> None:
    mondays = cron(0, 0, -1, -1, 1)
    assert mondays.matches(at(2024, 2, 5))
    assert not mondays.matches(at(2024, 2, 1))
    thirteenth = cron(0, 0, 13, -1, -1)
    assert thirteenth.matches(at(2024, 2, 13))
    assert not thirteenth.matches(at(2024, 2, 12))
    even_fridays = cron(0, 0, -2, -1, 5)
    assert even_fridays.matches(at(2024, 2, 2))  # Friday the 2nd
    assert not even_fridays.matches(at(2024, 2, 9))  # Friday the 9th
    assert not even_fridays.matches(at(2024, 2, 6))  # Tuesday the 6th


def test_hour_only_cron_matches_every_minute_of_that_hour() -> None:
    c = cron(-1, 3, -1, -1, -1)  # the classic gotcha
    assert all(c.matches(at(hour=3, minute=m)) for m in range(60))
    assert not c.matches(at(hour=4, minute=0))


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ((60, -1, -1, -1, -1), "minute"),
        ((-1, 24, -1, -1, -1), "hour"),
        ((-1, -1, 0, -1, -1), "day"),
        ((-1, -1, 32, -1, -1), "day"),
        ((-1, -1, -1, 0, -1), "month"),
        ((-1, -1, -1, 13, -1), "month"),
        ((-1, -1, -1, -1, 8), "weekday"),
    ],
)
def test_out_of_range_fields_are_refused(fields: tuple[int, int, int, int, int], name: str) -> None:
    with pytest.raises(TriggerError, match=f"cron {name} "):
        Cron(1, *fields)


@pytest.mark.parametrize("bad", [1.5, "3", None, True])
def test_fields_must_be_ints(bad: object) -> None:
    with pytest.raises(TriggerError, match="cron hour must be an int"):
        Cron(1, 0, bad, -1, -1, -1)  # type: ignore[arg-type]


def test_extreme_values_accepted() -> None:
    Cron(1, 59, 23, 31, 12, 7)
    Cron(1, 0, 0, 1, 1, 0)
    Cron(1, -100, -100, -100, -100, -100)


def test_signal_or_command() -> None:
    with pytest.raises(TriggerError, match="signal number or a command"):
        Cron(None, -1, -1, -1, -1, -1)
    with pytest.raises(TriggerError, match="not both"):
        Cron(1, -1, -1, -1, -1, -1, command="true")
    with pytest.raises(TriggerError, match="signal number"):
        Cron(256, -1, -1, -1, -1, -1)
    assert Cron(None, -1, -1, -1, -1, -1, command="true").command == "true"


# ------------------------------------------------------------------ firing


def wall(hour: int, minute: int, second: float = 0.0) -> tuple[float, time.struct_time]:
    """A fake wall clock in UTC-free terms: epoch seconds since 2024-02-04 00:00 local."""
    base = datetime.datetime(2024, 2, 4)
    moment = base + datetime.timedelta(hours=hour, minutes=minute, seconds=second)
    epoch = 1_707_000_000.0 + (moment - base).total_seconds()
    return epoch, moment.timetuple()


def fire(ts: TriggerSet, hour: int, minute: int, second: float = 0.0) -> list[Cron]:
    return ts.due_crons(*wall(hour, minute, second))


def test_hour_only_cron_fires_every_minute_of_that_hour() -> None:
    ts = TriggerSet()
    c = ts.add_cron(cron(-1, 3, -1, -1, -1))
    count = 0
    for minute in range(24 * 60):
        for second in (0.3, 30.0):  # the master checks about every second
            count += len(fire(ts, minute // 60, minute % 60, second))
    assert count == 60
    assert c.last_fired == wall(3, 59, 0.3)[0]


def test_first_check_inside_the_minute_fires_once() -> None:
    ts = TriggerSet()
    c = ts.add_cron(cron(30, 3))
    assert fire(ts, 3, 29, 59.9) == []
    assert fire(ts, 3, 30, 45.0) == [c]  # the first check in the minute, however late
    assert fire(ts, 3, 30, 46.0) == []
    assert fire(ts, 3, 30, 59.9) == []
    assert c.last_fired == wall(3, 30, 45.0)[0]


def test_at_most_once_per_sixty_seconds() -> None:
    ts = TriggerSet()
    c = ts.add_cron(cron())  # every minute
    assert fire(ts, 3, 0, 59.5) == [c]
    assert fire(ts, 3, 1, 0.2) == []  # a new minute, but only 0.7 s later
    assert fire(ts, 3, 1, 59.4) == []  # 59.9 s
    assert fire(ts, 3, 1, 59.5) == [c]  # 60 s
    assert fire(ts, 3, 2, 59.6) == [c]


def test_no_catch_up_for_missed_minutes() -> None:
    ts = TriggerSet()
    ts.add_cron(cron(30, 3))
    assert fire(ts, 3, 29, 59.0) == []
    # the master was stuck through 03:30
    assert fire(ts, 3, 31, 0.5) == []
    assert fire(ts, 4, 0, 0.5) == []


def test_clock_stepped_back() -> None:
    ts = TriggerSet()
    c = ts.add_cron(cron())
    epoch, local = wall(3, 0, 10.0)
    assert ts.due_crons(epoch, local) == [c]
    # a small step back within the minute does not fire it twice
    assert ts.due_crons(epoch - 5, wall(3, 0, 5.0)[1]) == []
    # a step back of a minute or more lets it fire again (uWSGI would wait for the clock)
    assert ts.due_crons(epoch - 3600, wall(2, 0, 10.0)[1]) == [c]


def test_unique_cron_skipped_while_running() -> None:
    ts = TriggerSet()
    c = ts.add_cron(Cron(None, -1, -1, -1, -1, -1, command="sleep 90", unique=True))
    assert fire(ts, 3, 0, 0.5) == [c]
    c.pid, c.started_at = 4242, wall(3, 0, 0.5)[0]
    assert fire(ts, 3, 1, 0.5) == []  # still running: skipped, last_fired unchanged
    assert c.last_fired == wall(3, 0, 0.5)[0]
    c.pid = None  # the caller reaped it at 03:01:30
    assert fire(ts, 3, 1, 31.0) == [c]


def test_non_unique_command_cron_fires_while_running() -> None:
    ts = TriggerSet()
    c = ts.add_cron(Cron(None, -1, -1, -1, -1, -1, command="sleep 90"))
    assert fire(ts, 3, 0, 0.5) == [c]
    c.pid = 4242
    assert fire(ts, 3, 1, 0.5) == [c]


def test_two_hundred_crons_no_cap() -> None:
    ts = TriggerSet()
    crons = [ts.add_cron(Cron(i % 256, -1, -1, -1, -1, -1)) for i in range(200)]
    assert len(ts.crons) == 200
    assert fire(ts, 12, 0, 0.1) == crons
    assert fire(ts, 12, 0, 1.1) == []
    assert fire(ts, 12, 1, 0.1) == crons


def test_crons_fire_in_registration_order() -> None:
    ts = TriggerSet()
    b = ts.add_cron(Cron(2, 0, -1, -1, -1, -1))
    a = ts.add_cron(Cron(1, -1, -1, -1, -1, -1))
    assert fire(ts, 5, 0, 0.0) == [b, a]


# ------------------------------------------------------------------ next_fire


def dt(*args: int) -> datetime.datetime:
    return datetime.datetime(*args)  # type: ignore[arg-type]


def test_next_fire_every_minute_is_strictly_after() -> None:
    c = cron()
    assert c.next_fire(dt(2024, 2, 4, 3, 0, 0)) == dt(2024, 2, 4, 3, 1)
    assert c.next_fire(dt(2024, 2, 4, 3, 0, 59)) == dt(2024, 2, 4, 3, 1)
    assert c.next_fire(dt(2024, 12, 31, 23, 59, 30)) == dt(2025, 1, 1, 0, 0)


def test_next_fire_daily() -> None:
    c = cron(0, 3)
    assert c.next_fire(dt(2024, 2, 4, 2, 59)) == dt(2024, 2, 4, 3, 0)
    assert c.next_fire(dt(2024, 2, 4, 3, 0)) == dt(2024, 2, 5, 3, 0)


def test_next_fire_hour_only_gotcha() -> None:
    c = cron(-1, 3)
    assert c.next_fire(dt(2024, 2, 4, 3, 0)) == dt(2024, 2, 4, 3, 1)
    assert c.next_fire(dt(2024, 2, 4, 3, 59)) == dt(2024, 2, 5, 3, 0)


def test_next_fire_divisibility_fields() -> None:
    assert cron(0, 0, -2).next_fire(dt(2024, 1, 31, 12)) == dt(2024, 2, 2)
    assert cron(0, 0, 1, -2).next_fire(dt(2024, 2, 1, 12)) == dt(2024, 4, 1)
    assert cron(0, 0, -1, -1, -2).next_fire(dt(2024, 2, 4, 12)) == dt(2024, 2, 6)


def test_next_fire_ored_day_and_weekday() -> None:
    c = cron(0, 0, 1, -1, 1)  # the 1st or a Monday
    assert c.next_fire(dt(2024, 2, 1, 0, 0)) == dt(2024, 2, 5)
    assert c.next_fire(dt(2024, 2, 26, 0, 0)) == dt(2024, 3, 1)


def test_next_fire_leap_day() -> None:
    assert cron(0, 0, 29, 2).next_fire(dt(2024, 3, 1)) == dt(2028, 2, 29)


def test_next_fire_rare_combination_beyond_four_years() -> None:
    c = cron(0, 0, 29, 2, -7)  # Feb 29 that is a Sunday (AND: weekday is negative)
    assert c.next_fire(dt(2024, 3, 1)) == dt(2032, 2, 29)
    assert c.next_fire(dt(2032, 3, 1)) == dt(2060, 2, 29)


@pytest.mark.parametrize(
    "fields",
    [
        (0, 0, 30, 2, -1),  # Feb 30
        (0, 0, 31, 4, -1),  # Apr 31
        (0, 0, -32, -1, -1),  # no day divisible by 32
        (0, 0, -1, -13, -1),  # no month divisible by 13
    ],
)
def test_next_fire_never(fields: tuple[int, int, int, int, int]) -> None:
    assert Cron(1, *fields).next_fire(dt(2024, 1, 1)) is None


def test_next_fire_large_divisor_on_zero_based_field_matches_zero() -> None:
    assert cron(-61, -25).next_fire(dt(2024, 1, 1, 0, 0)) == dt(2024, 1, 2, 0, 0)


def test_next_fire_keeps_tzinfo() -> None:
    tz = ZoneInfo("Europe/Rome")
    after = datetime.datetime(2024, 2, 4, 2, 10, tzinfo=tz)
    assert cron(0, 3).next_fire(after) == datetime.datetime(2024, 2, 4, 3, 0, tzinfo=tz)


@settings(max_examples=300, deadline=None)
@given(
    minute=st.sampled_from([-1, -2, -7, -15, 0, 5, 59]),
    hour=st.sampled_from([-1, -2, -5, 0, 3, 23]),
    day=st.sampled_from([-1, -2, -3, 1, 13, 31]),
    month=st.sampled_from([-1, -2, -4, 2, 12]),
    weekday=st.sampled_from([-1, -2, -7, 0, 1, 6, 7]),
    after=st.datetimes(
        min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2090, 1, 1)
    ),
)
def test_next_fire_agrees_with_matches(
    minute: int, hour: int, day: int, month: int, weekday: int, after: datetime.datetime
) -> None:
    c = Cron(1, minute, hour, day, month, weekday)
    result = c.next_fire(after)
    probe = after.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    # brute force over the next three days: nothing matches before the answer
    limit = probe + datetime.timedelta(days=3)
    while probe < limit and (result is None or probe < result):
        assert not c.matches(probe.timetuple()), probe
        probe += datetime.timedelta(minutes=1)
    if result is not None:
        assert result > after
        assert result.second == 0 and result.microsecond == 0
        assert c.matches(result.timetuple())


# ------------------------------------------------------------------ --cron / --cron2


def test_parse_cron_option() -> None:
    c = parse_cron_option("0 3 -1 -1 -1 /usr/bin/backup --full  'a b'")
    assert (c.minute, c.hour, c.day, c.month, c.weekday) == (0, 3, -1, -1, -1)
    assert c.command == "/usr/bin/backup --full  'a b'"
    assert c.signum is None and not c.unique and c.harakiri == 0
    assert parse_cron_option("-5  -1\t-1 -1 7   echo hi  ").command == "echo hi"
    assert parse_cron_option("0 0 1 1 0 true", unique=True).unique


@pytest.mark.parametrize(
    "value", ["", "0 3 -1 -1 -1", "0 3 -1 -1 echo hi", "a 3 -1 -1 -1 echo", "0 3 -1 -1 1.5 echo"]
)
def test_parse_cron_option_syntax(value: str) -> None:
    with pytest.raises(TriggerError, match="invalid cron syntax"):
        parse_cron_option(value)


def test_parse_cron_option_range() -> None:
    with pytest.raises(TriggerError, match="cron minute 60"):
        parse_cron_option("60 3 -1 -1 -1 echo")


def test_parse_cron2_option() -> None:
    c = parse_cron2_option("minute=0,hour=3,unique=1,harakiri=10 /usr/bin/backup --full")
    assert (c.minute, c.hour, c.day, c.month, c.weekday) == (0, 3, -1, -1, -1)
    assert c.command == "/usr/bin/backup --full"
    assert c.unique and c.harakiri == 10 and c.signum is None


def test_parse_cron2_defaults_and_week() -> None:
    c = parse_cron2_option("day=1,month=-2,week=7 run")
    assert (c.minute, c.hour, c.day, c.month, c.weekday) == (-1, -1, 1, -2, 7)
    assert not c.unique and c.harakiri == 0


def test_parse_cron2_harakiri_zero_opts_out() -> None:
    assert parse_cron2_option("harakiri=0 run").harakiri == -1
    assert parse_cron2_option("harakiri=-3 run").harakiri == -1
    assert parse_cron2_option("minute=1 run").harakiri == 0  # use --cron-harakiri


def test_parse_cron2_without_keys_is_all_command() -> None:
    c = parse_cron2_option("ls -l /tmp")
    assert c.command == "ls -l /tmp"
    assert (c.minute, c.hour, c.day, c.month, c.weekday) == (-1, -1, -1, -1, -1)


def test_parse_cron2_legion() -> None:
    with pytest.raises(TriggerError) as info:
        parse_cron2_option("legion=mylegion,minute=0 run")
    assert str(info.value) == "legion crons are not supported"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("minute=5", "unable to parse cron definition"),
        ("minute=5   ", "unable to parse cron definition"),
        ("minutes=5 run", "unknown cron2 key"),
        ("minute run", None),  # no '=': all command
        ("minute=x run", "needs an integer"),
        ("minute=60 run", "cron minute 60"),
        ("", "signal number or a command"),
    ],
)
def test_parse_cron2_errors(value: str, match: str | None) -> None:
    if match is None:
        assert parse_cron2_option(value).command == value
        return
    with pytest.raises(TriggerError, match=match):
        parse_cron2_option(value)
