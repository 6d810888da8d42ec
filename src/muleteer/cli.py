"""Command line entry point: argv + environment + INI files -> Config -> the master.

The command line follows uWSGI's getopt conventions: ``--name value`` or ``--name=value``
for options with a value, ``--flag`` for flags, and ``--mule=x`` (with ``=``) for the
options whose value is optional, so ``--mule foo.py`` is a signal-only mule followed by a
stray argument, exactly as in uWSGI. Positional arguments are INI files.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from muleteer import __version__, logs
from muleteer import options as o
from muleteer.config import TIER_CLI, TIER_ENV, TIER_INI, Config, ConfigError, Entry, build_config
from muleteer.inifile import IniError, read_ini
from muleteer.options import Kind

log = logging.getLogger(__name__)

INTERNAL_ENV = frozenset(
    {
        "UWSGI_RELOADS",
        "UWSGI_VASSALS_DIR",
        "UWSGI_EMPEROR_FD",
        "UWSGI_BROODLORD_NUM",
        "UWSGI_EMPEROR_FD_CONFIG",
        "UWSGI_EMPEROR_PROXY",
        "UWSGI_JAIL_PID",
        "UWSGI_ORIGINAL_PROC_NAME",
        "MULETEER_LISTEN_FDS",
        "MULETEER_RELOADS",
        "MULETEER_CHANNELS",
    }
)

# uWSGI options muleteer does not implement that take no value on the command line (the
# others consume the next argument, as getopt would).
_UNIMPLEMENTED_FLAGS = frozenset(
    [
        "thunder-lock",
        "single-interpreter",
        "no-orphans",
        "lazy",
        "memory-report",
        "close-on-exec",
        "close-on-exec2",
        "log-master",
        "log-4xx",
        "log-5xx",
        "log-micros",
        "log-x-forwarded-for",
        "harakiri-verbose",
        "ignore-sigpipe",
        "ignore-write-errors",
        "disable-write-exception",
        "cheap",
        "skip-atexit",
        "so-keepalive",
        "tcp-nodelay",
        "enable-proxy-protocol",
        "master-as-root",
        "no-default-app",
        "dynamic-apps",
        "py-tracebacker",
        "wsgi-disable-file-wrapper",
    ]
)


class UsageError(ConfigError):
    pass


def _cli_entries(argv: Sequence[str]) -> tuple[list[Entry], list[tuple[str, str]]]:
    """Command-line entries, plus the INI specs to load (``--ini`` and positional files)."""
    entries: list[Entry] = []
    ini_specs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("--"):
            name, eq, attached = arg[2:].partition("=")
            option = o.declared(name)
            source = f"--{name}"
        elif arg.startswith("-") and len(arg) >= 2 and arg != "-":
            option = o.SHORT.get(arg[1])
            name = option.name if option else arg[1]
            attached, eq = arg[2:], "=" if len(arg) > 2 else ""
            source = f"-{arg[1]}"
        else:
            if arg.endswith(".ini") or ".ini:" in arg:
                ini_specs.append((arg, "command line"))
                continue
            hint = " (use --wsgi-file to serve a Python file)" if arg.endswith(".py") else ""
            raise UsageError(f"unable to load configuration from {arg}{hint}")
        if option is None:
            if name not in o.UWSGI_NOT_IMPLEMENTED:
                raise UsageError(f"unknown option {source} (muleteer --help lists the options)")
            raw = attached
            takes_value = not eq and name not in _UNIMPLEMENTED_FLAGS
            if takes_value and i < len(argv) and not argv[i].startswith("-"):
                raw = argv[i]
                i += 1
            entries.append(Entry(name, raw, True, source, TIER_CLI))
            continue
        if option.kind in (Kind.FLAG, Kind.OPTIONAL_LIST, Kind.OPTIONAL_VALUE):
            entries.append(Entry(name, attached, bool(eq), source, TIER_CLI))
            continue
        if not eq:
            if i >= len(argv):
                raise UsageError(f"option {source} requires a value")
            attached = argv[i]
            i += 1
        if option is o.INI:
            ini_specs.append((attached, source))
        entries.append(Entry(name, attached, True, source, TIER_CLI))
    return entries, ini_specs


def _env_entries(environ: Mapping[str, str]) -> list[Entry]:
    entries = []
    for key in sorted(environ):
        for prefix in ("UWSGI_", "MULETEER_"):
            if key.startswith(prefix) and key not in INTERNAL_ENV:
                name = key[len(prefix) :].lower().replace("_", "-")
                if name:
                    entries.append(Entry(name, environ[key], True, f"env {key}", TIER_ENV))
    return entries


def _ini_entries(specs: Sequence[tuple[str, str]]) -> list[Entry]:
    """Read every INI file in order; ``ini = other.ini`` inside one is read in place."""
    out: list[Entry] = []
    last_file: list[str | None] = [None]
    seen: set[tuple[str, str]] = set()

    def load(spec: str, origin: str, depth: int) -> None:
        if depth > 10:
            raise ConfigError(f"ini {spec!r} (from {origin}): INI files include each other")
        try:
            path, items = read_ini(spec, last_file[0])
        except IniError as exc:
            raise ConfigError(f"{exc} (from {origin})") from None
        key = (os.path.abspath(path), spec)
        if key in seen:
            raise ConfigError(f"ini {spec!r} (from {origin}) is included twice")
        seen.add(key)
        last_file[0] = path
        for item in items:
            out.append(Entry(item.key, item.value, item.has_value, item.source, TIER_INI))
            if o.declared(item.key) is o.INI:
                load(item.value, item.source, depth + 1)

    for spec, origin in specs:
        load(spec, origin, 0)
    return out


def collect_entries(argv: Sequence[str], environ: Mapping[str, str]) -> list[Entry]:
    """Every configuration entry from INI files, the environment and the command line."""
    cli, ini_specs = _cli_entries(argv)
    env = _env_entries(environ)
    env_ini = [(e.raw, e.source) for e in env if o.declared(e.key) is o.INI]
    return _ini_entries(env_ini + ini_specs) + env + cli


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    return build_config(collect_entries(argv, environ), environ, argv)


def format_config(config: Config) -> str:
    """``--print-config``: the resolved options in INI form, each with its source."""
    lines = ["[uwsgi]"]
    for name, option in o.REGISTRY.items():
        if not config.is_set(option) or option is o.PRINT_CONFIG:
            continue
        value = config.get(option)
        values = value if isinstance(value, tuple) else (value,)
        lines.append(f"; {name} from {config.source(option)}")
        for item in values:
            text = "true" if item is True else "false" if item is False else str(item)
            if option is o.CHMOD_SOCKET or option is o.UMASK:
                text = format(int(item), "o")
            lines.append(f"{name} = {text}")
    for key, value in config.placeholders.items():
        lines.append(f"; placeholder\n{key} = {value}")
    return "\n".join(lines)


def usage() -> str:
    lines = [
        f"muleteer {__version__}: a Python application server for code written for uWSGI",
        "",
        "usage: muleteer [options] [file.ini ...]",
        "",
    ]
    for name, option in o.REGISTRY.items():
        flags = [f"--{name}", *(f"--{a}" for a in option.aliases)]
        if option.short:
            flags.insert(0, f"-{option.short}")
        metavar = f" {option.metavar}" if option.metavar else ""
        lines.append(f"  {', '.join(flags)}{metavar}")
        lines.append(f"      {option.help}")
    return "\n".join(lines)


def _out(text: str, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["top"]:
        from muleteer import top

        return top.main(args[1:])
    if args[:1] in (["--help"], ["-h"]):
        _out(usage())
        return 0
    if args[:1] == ["--version"]:
        _out(f"muleteer {__version__}")
        return 0
    try:
        config = load_config(args, os.environ)
    except ConfigError as exc:
        _out(f"muleteer: {exc}", sys.stderr)
        return 1
    if config.get(o.PRINT_CONFIG):
        _out(format_config(config))
        for warning in config.warnings:
            _out(f"; warning: {warning}")
        return 0
    logs.setup(config.get(o.LOGTO))
    for warning in config.warnings:
        log.warning("%s", warning)
    from muleteer.arbiter import run_master

    return run_master(config)
