"""Unit tests for muleteer's ``uwsgidecorators`` on top of a recording fake ``uwsgi``."""

from __future__ import annotations

import logging
import pickle
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest
from fake_uwsgi import DECORATORS_MODULE, FakeUwsgi, StopLoop, installed
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture
def fake() -> FakeUwsgi:
    return FakeUwsgi()


@pytest.fixture
def ud(fake: FakeUwsgi) -> Iterator[types.ModuleType]:
    with installed(fake) as module:
        yield module


def key_of(f: Any) -> str:
    return f"{f.__module__}.{f.__qualname__}"


class Boom(Exception):
    pass


# --- import time ---------------------------------------------------------------------------


def test_import_without_master_raises() -> None:
    fake = FakeUwsgi()
    fake.master_pid = 0
    with (
        pytest.raises(Exception, match="you have to enable the uWSGI master process"),
        installed(fake),
    ):
        pass


def test_import_wires_hooks_into_uwsgi(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    assert fake.post_fork_hook is ud.postfork_chain_hook
    assert fake.spooler is ud.manage_spool_request
    assert fake.mule_msg_extra_hooks == [ud.mule_msg_dispatcher]
    assert not hasattr(fake, "mule_msg_hook")


def test_import_assigns_mule_msg_hook_without_install_api() -> None:
    fake = FakeUwsgi(install_hook_api=False)
    with installed(fake) as ud:
        assert fake.mule_msg_hook is ud.mule_msg_dispatcher
        assert "install_mule_msg_hook" not in fake.names()


def test_fixture_imports_a_fresh_module_each_time() -> None:
    with installed(FakeUwsgi()) as first:
        first.mule_functions["x"] = print
    with installed(FakeUwsgi()) as second:
        assert second is not first
        assert second.mule_functions == {}


# --- get_free_signal -----------------------------------------------------------------------


def test_get_free_signal_starts_at_zero(ud: types.ModuleType) -> None:
    assert ud.get_free_signal() == 0


def test_get_free_signal_returns_lowest_unregistered(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    for num in (0, 1, 3):
        fake.register_signal(num, "", print)
    assert ud.get_free_signal() == 2


def test_get_free_signal_raises_when_table_full(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    for num in range(256):
        fake.register_signal(num, "", print)
    with pytest.raises(Exception, match="No free uwsgi signal available"):
        ud.get_free_signal()


@given(st.sets(st.integers(min_value=0, max_value=255), max_size=255))
def test_get_free_signal_property(registered: set[int]) -> None:
    fake = FakeUwsgi()
    with installed(fake) as ud:
        for num in registered:
            fake.register_signal(num, "", print)
        assert ud.get_free_signal() == min(set(range(256)) - registered)


# --- signal-based decorators ---------------------------------------------------------------


def test_signal_registers_handler_and_returns_function(
    ud: types.ModuleType, fake: FakeUwsgi
) -> None:
    def handler(num: int) -> None:
        pass

    assert ud.signal(17, target="mule1")(handler) is handler
    assert fake.signals[17] == ("mule1", handler)
    assert "signal_registered" not in fake.names()


def test_signal_default_target_is_empty(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    @ud.signal(3)
    def handler(num: int) -> None:
        pass

    assert fake.signals[3] == ("", handler)


ARMING_CASES = [
    ("timer", (30,), "add_timer", (30,)),
    ("mstimer", (250,), "add_ms_timer", (250,)),
    ("rbtimer", (5,), "add_rb_timer", (5, 0)),
    ("cron", (-1, 3, -1, -1, 0), "add_cron", (-1, 3, -1, -1, 0)),
    ("filemon", ("/tmp/watched",), "add_file_monitor", ("/tmp/watched",)),
]


@pytest.mark.parametrize(("decorator", "args", "api", "api_args"), ARMING_CASES)
def test_signal_source_uses_free_signal(
    ud: types.ModuleType,
    fake: FakeUwsgi,
    decorator: str,
    args: tuple[Any, ...],
    api: str,
    api_args: tuple[Any, ...],
) -> None:
    fake.register_signal(0, "", print)

    def handler(num: int) -> None:
        pass

    assert getattr(ud, decorator)(*args)(handler) is handler
    assert fake.signals[1] == ("", handler)
    assert fake.calls_to(api) == [((1, *api_args), {})]
    names = fake.names()
    assert names.index("register_signal", 1) < names.index(api)


@pytest.mark.parametrize(("decorator", "args", "api", "api_args"), ARMING_CASES)
def test_signal_source_with_signum_and_target(
    ud: types.ModuleType,
    fake: FakeUwsgi,
    decorator: str,
    args: tuple[Any, ...],
    api: str,
    api_args: tuple[Any, ...],
) -> None:
    def handler(num: int) -> None:
        pass

    getattr(ud, decorator)(*args, signum=99, target="workers")(handler)
    assert fake.signals == {99: ("workers", handler)}
    assert fake.calls_to(api) == [((99, *api_args), {})]
    # uWSGI computes a free signal eagerly, even when signum= is given.
    assert fake.calls_to("signal_registered") == [((0,), {})]


def test_signal_number_is_chosen_when_the_decorator_is_built(
    ud: types.ModuleType, fake: FakeUwsgi
) -> None:
    first = ud.timer(1)
    second = ud.timer(2)
    first(lambda num: None)
    second(lambda num: None)
    # Both were built before either registered, so both picked signal 0.
    assert [args[0] for args, _ in fake.calls_to("add_timer")] == [0, 0]


def test_successive_timers_get_successive_signals(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    for secs in (1, 2, 3):
        ud.timer(secs)(lambda num: None)
    assert fake.calls_to("add_timer") == [((0, 1), {}), ((1, 2), {}), ((2, 3), {})]


def test_timer_with_signum_still_fails_when_table_full(
    ud: types.ModuleType, fake: FakeUwsgi
) -> None:
    for num in range(256):
        fake.register_signal(num, "", print)
    with pytest.raises(Exception, match="No free uwsgi signal available"):
        ud.timer(10, signum=5)


# --- rpc, erlang ---------------------------------------------------------------------------


def test_rpc_registers_and_returns_function(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    def hello(name: str) -> str:
        return f"hi {name}"

    assert ud.rpc("hello")(hello) is hello
    assert fake.rpcs == {"hello": hello}


def test_erlang_without_plugin_raises_attribute_error(ud: types.ModuleType) -> None:
    with pytest.raises(AttributeError):
        ud.erlang("proc")(lambda: None)


def test_erlang_registers_process(
    ud: types.ModuleType, fake: FakeUwsgi, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, Any]] = []

    def register(name: str, f: Any) -> None:
        seen.append((name, f))

    monkeypatch.setattr(fake, "erlang_register_process", register, raising=False)

    def proc() -> None:
        pass

    assert ud.erlang("proc")(proc) is proc
    assert seen == [("proc", proc)]


# --- lock, thread, harakiri -----------------------------------------------------------------


def test_lock_wraps_call_in_lock_and_unlock(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    @ud.lock
    def work(a: int, b: int = 0) -> int:
        fake.calls.append(("work", (a, b), {}))
        return a + b

    assert work(2, b=3) == 5
    assert [n for n in fake.names() if n in ("lock", "work", "unlock")] == [
        "lock",
        "work",
        "unlock",
    ]
    assert fake.calls_to("lock") == [((0,), {})]
    assert work.__name__ == "work"


def test_lock_unlocks_when_function_raises(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    @ud.lock
    def work() -> None:
        raise Boom

    with pytest.raises(Boom):
        work()
    assert [n for n in fake.names() if n in ("lock", "unlock")] == ["lock", "unlock"]


def test_lock_skips_function_in_spooler(
    ud: types.ModuleType, fake: FakeUwsgi, caplog: pytest.LogCaptureFixture
) -> None:
    fake.spooler_process = True
    ran: list[int] = []

    @ud.lock
    def work() -> int:
        ran.append(1)
        return 1

    with caplog.at_level(logging.WARNING, logger=DECORATORS_MODULE):
        assert work() is None
    assert ran == []
    assert "lock" not in fake.names()
    assert "spooler" in caplog.text


def test_thread_starts_daemon_thread_and_returns_function(ud: types.ModuleType) -> None:
    done = threading.Event()
    seen: dict[str, Any] = {}

    def work(a: int, b: int) -> None:
        current = threading.current_thread()
        seen.update(args=(a, b), daemon=current.daemon, thread=current)
        done.set()

    start = ud.thread(work)
    assert start(1, 2) is work
    assert done.wait(5)
    seen["thread"].join(5)
    assert seen["args"] == (1, 2)
    assert seen["daemon"] is True
    assert seen["thread"] is not threading.main_thread()


def test_thread_rejects_keyword_arguments(ud: types.ModuleType) -> None:
    start = ud.thread(lambda a: None)
    with pytest.raises(TypeError):
        start(a=1)


def test_harakiri_arms_and_disarms(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    @ud.harakiri(7)
    def work(x: int) -> int:
        fake.calls.append(("work", (), {}))
        return x * 2

    assert work(4) == 8
    assert [(n, a) for n, a, _ in fake.calls if n in ("set_user_harakiri", "work")] == [
        ("set_user_harakiri", (7,)),
        ("work", ()),
        ("set_user_harakiri", (0,)),
    ]


def test_harakiri_disarms_when_function_raises(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    @ud.harakiri(7)
    def work() -> None:
        raise Boom

    with pytest.raises(Boom):
        work()
    assert fake.calls_to("set_user_harakiri") == [((7,), {}), ((0,), {})]


# --- postfork chain ------------------------------------------------------------------------


def test_postfork_plain_returns_callable_entry(ud: types.ModuleType) -> None:
    ran: list[str] = []

    @ud.postfork
    def setup() -> str:
        ran.append("setup")
        return "done"

    assert setup is not None
    assert setup("ignored", key="ignored") == "done"
    assert ran == ["setup"]
    assert ud.postfork_chain == [setup]


def test_postfork_chain_runs_in_registration_order(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    order: list[str] = []

    @ud.postfork
    def first() -> None:
        order.append("first")

    @ud.postfork(0)
    def second() -> None:
        order.append("second")

    @ud.postfork
    def third() -> None:
        order.append("third")

    assert second is None
    fake.post_fork_hook()
    assert order == ["first", "second", "third"]


def test_postfork_with_worker_id_runs_only_in_that_worker(
    ud: types.ModuleType, fake: FakeUwsgi
) -> None:
    ran: list[int] = []

    @ud.postfork(2)
    def only_two() -> None:
        ran.append(fake.current_worker_id)

    assert only_two is None
    for wid in (0, 1, 2, 3):
        fake.current_worker_id = wid
        ud.postfork_chain_hook()
    assert ran == [2]


def test_postfork_exception_skips_later_entries(ud: types.ModuleType) -> None:
    ran: list[str] = []

    @ud.postfork
    def bad() -> None:
        raise Boom

    @ud.postfork
    def later() -> None:
        ran.append("later")

    with pytest.raises(Boom):
        ud.postfork_chain_hook()
    assert ran == []


# --- @mule, @muleloop, @mulemsg, @farm -------------------------------------------------------


def test_mule_runs_once_only_in_its_mule(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    ran: list[int] = []

    @ud.mule(2)
    def brain() -> None:
        ran.append(fake.current_mule_id)

    assert brain is None
    for mule_id in (0, 1, 2, 3):
        fake.current_mule_id = mule_id
        ud.postfork_chain_hook()
    assert ran == [2]


def test_mule_exception_goes_to_excepthook_and_exits_1(
    ud: types.ModuleType, fake: FakeUwsgi, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooked: list[type[BaseException]] = []
    monkeypatch.setattr("sys.excepthook", lambda tp, value, tb: hooked.append(tp))

    @ud.mule(1)
    def brain() -> None:
        raise Boom

    fake.current_mule_id = 1
    with pytest.raises(SystemExit) as exit_info:
        ud.postfork_chain_hook()
    assert exit_info.value.code == 1
    assert hooked == [Boom]


def test_mule_system_exit_keeps_its_code(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    @ud.mule(1)
    def brain() -> None:
        raise SystemExit(0)

    fake.current_mule_id = 1
    with pytest.raises(SystemExit) as exit_info:
        ud.postfork_chain_hook()
    assert exit_info.value.code == 0


@pytest.mark.parametrize("decorator", ["mule", "muleloop", "mulemsg"])
def test_mule_decorators_need_an_int_id(ud: types.ModuleType, decorator: str) -> None:
    with pytest.raises(TypeError, match=decorator):
        getattr(ud, decorator)(lambda: None)
    with pytest.raises(TypeError):
        getattr(ud, decorator)("1")


def test_muleloop_loops_in_its_mule_only(
    ud: types.ModuleType, fake: FakeUwsgi, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooked: list[type[BaseException]] = []
    monkeypatch.setattr("sys.excepthook", lambda tp, value, tb: hooked.append(tp))
    calls: list[int] = []

    @ud.muleloop(3)
    def tick() -> None:
        calls.append(1)
        if len(calls) == 5:
            raise StopLoop

    assert tick is None
    fake.current_mule_id = 1
    ud.postfork_chain_hook()
    assert calls == []
    fake.current_mule_id = 3
    with pytest.raises(SystemExit) as exit_info:
        ud.postfork_chain_hook()
    assert exit_info.value.code == 1
    assert len(calls) == 5
    assert hooked == [StopLoop]


def test_mulemsg_feeds_non_empty_messages(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    got: list[bytes] = []

    @ud.mulemsg(2)
    def consume(message: bytes) -> None:
        got.append(message)

    assert consume is None
    fake.mule_inbox = [b"one", b"", None, b"two"]
    fake.current_mule_id = 1
    ud.postfork_chain_hook()
    assert got == []
    assert "mule_get_msg" not in fake.names()
    fake.current_mule_id = 2
    with pytest.raises(StopLoop):
        ud.postfork_chain_hook()
    assert got == [b"one", b"two"]


def test_farm_runs_in_member_mules_only(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    got: list[tuple[int, bytes]] = []

    @ud.farm("crunchers")
    def crunch(message: bytes) -> None:
        got.append((fake.current_mule_id, message))

    assert crunch is None
    fake.farm_inbox = [b"a", b"", None, b"b"]
    fake.current_mule_id = 0  # a worker
    ud.postfork_chain_hook()
    fake.current_mule_id = 1
    fake.farms = {"other"}
    ud.postfork_chain_hook()
    assert got == []
    assert "farm_get_msg" not in fake.names()
    fake.farms = {"crunchers"}
    with pytest.raises(StopLoop):
        ud.postfork_chain_hook()
    assert got == [(1, b"a"), (1, b"b")]
    assert fake.calls_to("in_farm")[-1] == (("crunchers",), {})


@pytest.mark.parametrize("form", ["empty-call", "none", "bare"])
def test_farm_without_name_means_any_farm(ud: types.ModuleType, fake: FakeUwsgi, form: str) -> None:
    got: list[bytes] = []

    def crunch(message: bytes) -> None:
        got.append(message)

    if form == "empty-call":
        assert ud.farm()(crunch) is None
    elif form == "none":
        assert ud.farm(None)(crunch) is None
    else:
        assert ud.farm(crunch) is None
    fake.current_mule_id = 1
    ud.postfork_chain_hook()  # in no farm: returns at once
    assert got == []
    fake.farms = {"anything"}
    fake.farm_inbox = [b"x"]
    with pytest.raises(StopLoop):
        ud.postfork_chain_hook()
    assert got == [b"x"]
    assert fake.calls_to("in_farm")[-1] == ((), {})


# --- @mulefunc and the dispatcher -----------------------------------------------------------


def dispatch_recorded(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    for payload, _target in fake.mule_messages:
        ud.mule_msg_dispatcher(payload)
    fake.mule_messages.clear()


def test_mulefunc_sends_instead_of_running(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    ran: list[Any] = []

    @ud.mulefunc
    def work(a: int, *, b: str) -> str:
        ran.append((a, b))
        return "result"

    assert work(1, b="x") is None
    assert ran == []
    [(args, kwargs)] = fake.calls_to("mule_msg")
    payload, target = args
    assert target == 0
    assert kwargs == {"block": True, "timeout": 30.0}
    assert pickle.loads(payload) == {
        "service": "uwsgi_mulefunc",
        "func": key_of(work),
        "args": (1,),
        "kwargs": {"b": "x"},
    }
    assert ud.mule_functions[key_of(work)] is work.__wrapped__
    assert work.__name__ == "work"


def test_mulefunc_round_trip_through_dispatcher(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    ran: list[Any] = []

    @ud.mulefunc
    def work(*args: Any, **kwargs: Any) -> None:
        ran.append((args, kwargs))

    work(1, [2, 3], flag=True)
    work()
    dispatch_recorded(ud, fake)
    assert ran == [((1, [2, 3]), {"flag": True}), ((), {})]


@given(
    st.lists(st.integers() | st.text() | st.binary() | st.none(), max_size=5),
    st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.integers(), max_size=4),
)
def test_mulefunc_round_trip_property(args: list[Any], kwargs: dict[str, int]) -> None:
    fake = FakeUwsgi()
    with installed(fake) as ud:
        seen: list[Any] = []

        @ud.mulefunc(1)
        def work(*a: Any, **kw: Any) -> None:
            seen.append((a, kw))

        work(*args, **kwargs)
        dispatch_recorded(ud, fake)
        assert seen == [(tuple(args), kwargs)]


@pytest.mark.parametrize("target", [2, "crunchers", b"crunchers"])
def test_mulefunc_with_target(ud: types.ModuleType, fake: FakeUwsgi, target: Any) -> None:
    @ud.mulefunc(target)
    def work() -> None:
        pass

    assert callable(work)
    work()
    [(args, _kwargs)] = fake.calls_to("mule_msg")
    assert args[1] == target
    assert type(args[1]) is type(target)


def test_mulefunc_keys_do_not_collide_across_modules(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    ran: list[str] = []

    def make(module: str) -> Any:
        def send() -> None:
            ran.append(module)

        send.__module__ = module
        return ud.mulefunc(send)

    one, two = make("app.one"), make("app.two")
    assert set(ud.mule_functions) >= {key_of(one), key_of(two)}
    assert key_of(one) != key_of(two)
    two()
    one()
    dispatch_recorded(ud, fake)
    assert ran == ["app.two", "app.one"]


def test_mulefunc_timeout_is_read_at_call_time(
    ud: types.ModuleType, fake: FakeUwsgi, monkeypatch: pytest.MonkeyPatch
) -> None:
    @ud.mulefunc
    def work() -> None:
        pass

    monkeypatch.setattr(ud, "MULEFUNC_TIMEOUT", 2.5)
    work()
    assert fake.calls_to("mule_msg")[0][1] == {"block": True, "timeout": 2.5}


@pytest.mark.parametrize(
    ("target", "described"), [(0, "any mule"), (3, "mule 3"), ("crunchers", "farm 'crunchers'")]
)
def test_mulefunc_raises_when_queue_stays_full(
    ud: types.ModuleType, fake: FakeUwsgi, target: Any, described: str
) -> None:
    fake.mule_msg_result = False

    @ud.mulefunc(target)
    def work() -> None:
        pass

    with pytest.raises(RuntimeError, match=described) as info:
        work()
    assert "work" in str(info.value)


def test_mulefunc_falls_back_when_mule_msg_cannot_block(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeUwsgi(legacy_mule_msg=True)
    with installed(fake) as ud, caplog.at_level(logging.WARNING, logger=DECORATORS_MODULE):

        @ud.mulefunc(2)
        def work(x: int) -> None:
            pass

        work(1)
        work(2)
        assert fake.calls_to("mule_msg") == [
            ((fake.mule_messages[0][0], 2), {}),
            ((fake.mule_messages[1][0], 2), {}),
        ]
        assert "block" in caplog.text
        fake.mule_msg_result = False
        with pytest.raises(RuntimeError, match="mule 2"):
            work(3)
        fake.mule_msg_result = None  # uWSGI <= 2.0.15 returned None: treated as sent
        work(4)


def test_mulefunc_unrelated_type_error_propagates(
    ud: types.ModuleType, fake: FakeUwsgi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bool:
        raise TypeError("a bytes-like object is required")

    monkeypatch.setattr(fake, "mule_msg", broken)

    @ud.mulefunc
    def work() -> None:
        pass

    with pytest.raises(TypeError, match="bytes-like"):
        work()


@pytest.mark.parametrize(
    "message",
    [
        b"not a pickle at all",
        b"",
        pickle.dumps(["a", "list"]),
        pickle.dumps({"service": "something_else", "func": "x"}),
    ],
)
def test_dispatcher_ignores_foreign_messages(
    ud: types.ModuleType, caplog: pytest.LogCaptureFixture, message: bytes
) -> None:
    with caplog.at_level(logging.WARNING, logger=DECORATORS_MODULE):
        ud.mule_msg_dispatcher(message)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert f"{len(message)}-byte" in record.getMessage()


def test_dispatcher_logs_unknown_function(
    ud: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    message = pickle.dumps(
        {"service": "uwsgi_mulefunc", "func": "app.tasks.missing", "args": (), "kwargs": {}}
    )
    with caplog.at_level(logging.WARNING, logger=DECORATORS_MODULE):
        ud.mule_msg_dispatcher(message)
    [record] = caplog.records
    assert record.levelno >= logging.WARNING
    assert "app.tasks.missing" in record.getMessage()


def test_dispatcher_logs_exception_and_keeps_going(
    ud: types.ModuleType, fake: FakeUwsgi, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []

    @ud.mulefunc
    def work(n: int) -> None:
        if n == 1:
            raise Boom("first call fails")
        ran.append(n)

    work(1)
    work(2)
    with caplog.at_level(logging.WARNING, logger=DECORATORS_MODULE):
        dispatch_recorded(ud, fake)
    assert ran == [2]
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is Boom
    assert key_of(work) in record.getMessage()


# --- spooler -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["spool", "spoolforever", "spoolraw"])
def test_spool_decorators_need_the_spooler(ud: types.ModuleType, name: str) -> None:
    decorator = getattr(ud, name)
    message = f"you have to enable the uWSGI spooler to use @{name} decorator"
    with pytest.raises(Exception, match=message):
        decorator(lambda args: None)
    with pytest.raises(Exception, match=message):
        decorator(pass_arguments=True)(lambda: None)


@pytest.mark.parametrize(
    ("name", "ret"), [("spool", b"-2"), ("spoolforever", b"-1"), ("spoolraw", None)]
)
def test_spool_plain_enqueues_encoded_dict(
    ud: types.ModuleType, fake: FakeUwsgi, name: str, ret: bytes | None
) -> None:
    fake.opt["spooler"] = b"/tmp/spool"
    ran: list[Any] = []

    @getattr(ud, name)
    def task(arguments: dict[str, Any]) -> int:
        ran.append(arguments)
        return -2

    assert task({"a": "1"}, b="2") == b"/tmp/spool/uwsgi_spoolfile_1"
    assert task.spool(c="3") == b"/tmp/spool/uwsgi_spoolfile_2"
    assert task.__wrapped__.spool(d="4") == b"/tmp/spool/uwsgi_spoolfile_3"
    assert ran == []
    expected = {b"ud_spool_func": b"task", b"a": b"1", b"b": b"2"}
    if ret is not None:
        expected[b"ud_spool_ret"] = ret
    assert fake.spooled[0] == expected
    assert fake.spooled[1][b"c"] == b"3"
    assert fake.spooled[2][b"d"] == b"4"


def test_spool_round_trip_through_manage_spool_request(
    ud: types.ModuleType, fake: FakeUwsgi
) -> None:
    fake.opt["spooler"] = b"/tmp/spool"
    got: list[dict[str, Any]] = []

    @ud.spool
    def task(arguments: dict[str, Any]) -> None:
        got.append(arguments)

    task(name="ünïcode")
    assert fake.spooler(fake.spooled[0]) == fake.SPOOL_OK
    assert got == [{"ud_spool_func": "task", "name": "ünïcode", "ud_spool_ret": "-2"}]


def test_spool_pass_arguments_round_trip(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    fake.opt["spooler"] = True
    got: list[Any] = []

    @ud.spoolforever(pass_arguments=True)
    def task(a: int, b: list[int], *, c: str = "") -> None:
        got.append((a, b, c))

    task(1, [2], c="x", priority="3", at="99", message_dict={"extra": "e"})
    spooled = fake.spooled[0]
    assert spooled[b"priority"] == b"3"
    assert spooled[b"at"] == b"99"
    assert spooled[b"extra"] == b"e"
    assert pickle.loads(spooled[b"args"]) == (1, [2])
    assert pickle.loads(spooled[b"kwargs"]) == {"c": "x"}
    assert ud.manage_spool_request(spooled) == fake.SPOOL_RETRY
    assert got == [(1, [2], "x")]


def test_spoolraw_returns_function_result(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    fake.opt["spooler"] = True

    @ud.spoolraw
    def ignore(arguments: dict[str, Any]) -> int:
        return fake.SPOOL_IGNORE

    @ud.spoolraw
    def forgetful(arguments: dict[str, Any]) -> None:
        return None

    ignore()
    forgetful()
    assert ud.manage_spool_request(fake.spooled[0]) == 0
    with pytest.raises(TypeError):
        ud.manage_spool_request(fake.spooled[1])


def test_manage_spool_request_unknown_function_raises(ud: types.ModuleType) -> None:
    with pytest.raises(KeyError):
        ud.manage_spool_request({b"ud_spool_func": b"nobody"})


def test_manage_spool_request_keeps_non_utf8_values(ud: types.ModuleType, fake: FakeUwsgi) -> None:
    fake.opt["spooler"] = True
    got: list[dict[str, Any]] = []

    @ud.spool
    def task(arguments: dict[str, Any]) -> None:
        got.append(arguments)

    task_vars = {b"ud_spool_func": b"task", b"ud_spool_ret": b"-2", b"body": b"\xff\xfe"}
    assert ud.manage_spool_request(task_vars) == -2
    assert got == [{"ud_spool_func": "task", "ud_spool_ret": "-2", "body": b"\xff\xfe"}]
