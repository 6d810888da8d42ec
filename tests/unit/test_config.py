"""The option registry, INI files, environment variables and their precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from muleteer import options as o
from muleteer.cli import format_config, load_config, main
from muleteer.config import ConfigError
from muleteer.optionsdoc import render

ROOT = Path(__file__).resolve().parents[2]


def cfg(argv: list[str], env: dict[str, str] | None = None):
    return load_config(argv, env or {})


def ini(tmp_path: Path, text: str, name: str = "app.ini") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- the same Config from every source ----------------------------------------------------


def test_cli_ini_and_env_give_the_same_config(tmp_path: Path) -> None:
    from_cli = cfg(
        [
            "--processes",
            "3",
            "--master",
            "--http-socket",
            ":8000",
            "--harakiri=5",
            "--mule",
            "--mule=job.py",
            "--need-app",
        ]
    )
    path = ini(
        tmp_path,
        "[uwsgi]\nprocesses = 3\nmaster = true\nhttp-socket = :8000\n"
        "harakiri = 5\nmule = true\nmule = job.py\nneed-app =\n",
    )
    from_ini = cfg(["--ini", path])
    from_env = cfg(
        [],
        {
            "UWSGI_PROCESSES": "3",
            "UWSGI_MASTER": "1",
            "UWSGI_HTTP_SOCKET": ":8000",
            "MULETEER_HARAKIRI": "5",
            "UWSGI_NEED_APP": "true",
        },
    )
    for option in (o.PROCESSES, o.MASTER, o.HTTP_SOCKET, o.HARAKIRI, o.NEED_APP):
        assert from_cli.get(option) == from_ini.get(option) == from_env.get(option), option
    assert from_cli.get(o.PROCESSES) == 3
    assert [m.program for m in from_cli.mules] == [m.program for m in from_ini.mules]
    assert [m.program for m in from_ini.mules] == [None, "job.py"]


def test_aliases_and_short_forms() -> None:
    config = cfg(
        ["-p", "4", "-s", "127.0.0.1:3031", "-w", "pkg.app:wsgi", "-M", "-L", "--workers", "5"]
    )
    assert config.get(o.PROCESSES) == 5  # the last value wins
    assert config.get(o.SOCKET) == ("127.0.0.1:3031",)
    assert config.get(o.MODULE) == "pkg.app:wsgi"
    assert config.get(o.MASTER) is True
    assert config.get(o.DISABLE_LOGGING) is True


def test_precedence_defaults_ini_env_cli(tmp_path: Path) -> None:
    path = ini(tmp_path, "[uwsgi]\nprocesses = 2\nlisten = 50\nharakiri = 7\n")
    assert cfg([]).get(o.PROCESSES) == 1
    config = cfg(["--ini", path, "--listen", "60"], {"UWSGI_PROCESSES": "4", "UWSGI_LISTEN": "55"})
    assert config.get(o.PROCESSES) == 4  # env beats INI
    assert config.get(o.LISTEN) == 60  # CLI beats env and INI
    assert config.get(o.HARAKIRI) == 7  # INI beats the default
    assert config.source(o.PROCESSES) == "env UWSGI_PROCESSES"
    assert config.source(o.LISTEN) == "--listen"
    assert config.source(o.HARAKIRI) == f"{path}:4"


def test_list_options_accumulate_across_sources(tmp_path: Path) -> None:
    path = ini(tmp_path, "[uwsgi]\nmule = true\nmule = true\n")
    config = cfg(["--ini", path, "--mule=tasks.py"])
    assert [(m.id, m.program) for m in config.mules] == [(1, None), (2, None), (3, "tasks.py")]


def test_mule_ids_follow_option_order() -> None:
    config = cfg(["--mule=a.py", "--mules=2", "--mule=b.py", "--mule=pkg.mod:run"])
    assert [(m.id, m.program) for m in config.mules] == [
        (1, "a.py"),
        (2, None),
        (3, None),
        (4, "b.py"),
        (5, "pkg.mod:run"),
    ]


def test_mule_with_a_space_is_a_stray_argument_like_uwsgi() -> None:
    with pytest.raises(ConfigError, match=r"unable to load configuration from foo\.py"):
        cfg(["--mule", "foo.py"])


@pytest.mark.parametrize("value", ["true", "", "1", "yes", "scripts.wsgi"])
def test_mule_values_that_make_signal_only_mules(value: str) -> None:
    assert cfg([f"--mule={value}"]).mules[0].program is None


# -- INI syntax ------------------------------------------------------------------------------


def test_ini_section_selection_and_comments(tmp_path: Path) -> None:
    path = ini(
        tmp_path,
        "[other]\nprocesses = 9\n[uwsgi]\n; a comment\n# another\n"
        "  processes = 2  \nchdir = /srv/a ; not a comment\n[prod]\nprocesses = 8\n",
    )
    assert cfg(["--ini", path]).get(o.PROCESSES) == 2
    assert cfg(["--ini", path]).get(o.CHDIR) == "/srv/a ; not a comment"
    assert cfg(["--ini", f"{path}:prod"]).get(o.PROCESSES) == 8
    assert cfg([path]).get(o.PROCESSES) == 2  # a positional .ini file is loaded too


def test_ini_flags(tmp_path: Path) -> None:
    for line, expected in [
        ("master", True),
        ("master =", True),
        ("master = true", True),
        ("master = 1", True),
        ("master = false", False),
        ("master = off", False),
        ("master = 0", False),
        ("master = no", False),
    ]:
        assert cfg(["--ini", ini(tmp_path, f"[uwsgi]\n{line}\n")]).get(o.MASTER) is expected, line


def test_ini_placeholders_env_and_magic_vars(tmp_path: Path) -> None:
    path = ini(
        tmp_path,
        "[uwsgi]\nbase = /srv/site\nchdir = %(base)/app\n"
        "pythonpath = $(TESTDIR_X)/lib\npidfile = %d%n.pid\n"
        "procname-prefix = %Qx-\nlogto = $(UNSET_VARIABLE_X)/log\n",
        "site.ini",
    )
    config = cfg(["--ini", path], {"TESTDIR_X": "/opt/x"})
    assert config.get(o.CHDIR) == "/srv/site/app"
    assert config.get(o.PYTHONPATH) == ("/opt/x/lib",)
    assert config.get(o.PIDFILE) == f"{tmp_path}/site.pid"
    assert config.get(o.PROCNAME_PREFIX) == "x-"  # unknown magic variable: removed, as uWSGI
    assert config.get(o.LOGTO) == "$(UNSET_VARIABLE_X)/log"  # unresolved: kept literally
    assert config.placeholders["base"] == "/srv/site"


def test_placeholders_can_reference_options(tmp_path: Path) -> None:
    path = ini(tmp_path, "[uwsgi]\nchdir = /srv\nlogto = %(chdir)/app.log\n")
    assert cfg(["--ini", path]).get(o.LOGTO) == "/srv/app.log"


def test_ini_includes_and_reading_another_section_of_the_last_file(tmp_path: Path) -> None:
    ini(tmp_path, "[uwsgi]\nprocesses = 3\n[extra]\nharakiri = 9\n", "base.ini")
    path = ini(tmp_path, f"[uwsgi]\nini = {tmp_path}/base.ini\nlisten = 12\n")
    config = cfg(["--ini", path])
    assert (config.get(o.PROCESSES), config.get(o.LISTEN)) == (3, 12)
    config = cfg(["--ini", f"{tmp_path}/base.ini", "--ini", ":extra"])
    assert (config.get(o.PROCESSES), config.get(o.HARAKIRI)) == (3, 9)


def test_set_and_set_placeholder() -> None:
    config = cfg(
        [
            "--set",
            "processes=6",
            "--set-ph",
            "root=/srv",
            "--set",
            "anything=1",
            "--chdir",
            "%(root)/x",
        ]
    )
    assert config.get(o.PROCESSES) == 6
    assert config.get(o.CHDIR) == "/srv/x"
    with pytest.raises(ConfigError, match="'processes' is an option"):
        cfg(["--set-placeholder", "processes=2"])


# -- errors: one line naming the option, the value and the source --------------------------


def test_bad_value_names_option_value_and_source(tmp_path: Path) -> None:
    path = ini(tmp_path, "[uwsgi]\nmaster = true\nprocesses = lots\n")
    with pytest.raises(ConfigError) as exc:
        cfg(["--ini", path])
    assert str(exc.value) == (
        f"option 'processes': invalid value 'lots' (from {path}:3): expected an integer"
    )
    with pytest.raises(
        ConfigError,
        match=r"option 'harakiri': invalid value '-1' \(from "
        r"--harakiri\): must be >= 0",
    ):
        cfg(["--harakiri", "-1"])
    with pytest.raises(ConfigError, match="from env UWSGI_LISTEN"):
        cfg([], {"UWSGI_LISTEN": "x"})


def test_unknown_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option --proceses"):
        cfg(["--proceses", "2"])
    path = ini(tmp_path, "[uwsgi]\nproceses = 2\n")
    with pytest.raises(ConfigError, match=rf"unknown option 'proceses' \(from {path}:2\)"):
        cfg(["--ini", path])


def test_unknown_env_variables_only_warn() -> None:
    config = cfg([], {"UWSGI_PROFILE": "core"})
    assert any("UWSGI_PROFILE" in w for w in config.warnings)


def test_unimplemented_uwsgi_options_warn_by_name(tmp_path: Path) -> None:
    config = cfg(["--cheaper", "2", "--thunder-lock", "--processes", "2"])
    assert config.get(o.PROCESSES) == 2
    assert any("'cheaper'" in w and "not implemented" in w for w in config.warnings)
    assert any("'thunder-lock'" in w for w in config.warnings)
    path = ini(tmp_path, "[uwsgi]\noffload-threads = 4\n")
    assert any("'offload-threads'" in w and f"{path}:2" in w for w in cfg(["--ini", path]).warnings)


def test_master_false_warns() -> None:
    assert any("master = false" in w for w in cfg(["--master=false"]).warnings)


@pytest.mark.parametrize(
    ("farm", "message"),
    [
        ("nocolon", r"invalid farm value \(nocolon\) must be in the form name:mule\[,muleN\]"),
        ("jobs:1,3", "invalid mule id: 3"),
        ("jobs:x", "invalid mule id: x"),
    ],
)
def test_bad_farms_stop_start_up_with_uwsgi_wording(farm: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg(["--mules", "2", "--farm", farm])


def test_farms() -> None:
    config = cfg(["--mules", "3", "--farm", "jobs:1,2", "--farm", "solo:3"])
    assert [(f.name, f.mule_ids) for f in config.farms] == [("jobs", (1, 2)), ("solo", (3,))]


def test_bad_socket_address() -> None:
    with pytest.raises(ConfigError, match=r"option .http-socket.: invalid value .1\.2\.3\.4:9+."):
        cfg(["--http-socket", "1.2.3.4:99999"])


def test_chmod_socket_optional_value() -> None:
    assert cfg(["--chmod-socket"]).get(o.CHMOD_SOCKET) == 0o666
    assert cfg(["--chmod-socket=660"]).get(o.CHMOD_SOCKET) == 0o660
    assert cfg([]).get(o.CHMOD_SOCKET) is None


# -- uwsgi.opt ----------------------------------------------------------------------------------


def test_uwsgi_opt_types(tmp_path: Path) -> None:
    path = ini(
        tmp_path, "[uwsgi]\nmaster\nmule = true\nmule = true\nmy-key = hello\nchdir = %(my-key)\n"
    )
    config = cfg(["--ini", path, "--need-app", "--processes", "2"])
    assert config.opt["master"] == b""  # bare INI flag
    assert config.opt["mule"] == [b"true", b"true"]
    assert config.opt["need-app"] is True  # valueless command-line flag
    assert config.opt["processes"] == b"2"
    assert config.opt["my-key"] == b"hello"  # placeholders are visible too, as in uWSGI


# -- --print-config, --version, docs ---------------------------------------------------------


def test_print_config_shows_values_and_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--processes", "2", "--mule", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "; processes from --processes\nprocesses = 2" in out
    assert "mule = " in out


def test_config_error_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--processes", "zero"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("muleteer: option 'processes'")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from muleteer import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"muleteer {__version__}"


def test_format_config_round_trips() -> None:
    config = cfg(["--processes", "2", "--http-socket", ":9", "--chmod-socket=640"])
    text = format_config(config)
    assert "chmod-socket = 640" in text and "http-socket = :9" in text


def test_options_doc_is_fresh() -> None:
    committed = (ROOT / "docs" / "options.md").read_text()
    assert committed == render(), "docs/options.md is stale: run `make docs-options`"


def test_every_option_has_help_and_a_category() -> None:
    from muleteer.optionsdoc import CATEGORIES

    for option in o.REGISTRY.values():
        assert option.help and option.category in CATEGORIES, option
