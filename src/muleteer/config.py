"""The resolved, typed configuration and the specs derived from it.

Sources arrive as an ordered list of :class:`Entry` (see ``cli.collect_entries``): INI
entries first, then environment variables, then the command line, each in the order
written. Scalar options take the last value of the highest tier (defaults < INI < env <
CLI); list options keep every value in that order, so ``mule`` in an INI and ``--mule`` on
the command line are two mules. Every error names the option, the value and where it came
from, in one line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from muleteer import options as o
from muleteer.options import Kind, Option, OptionValueError

log = logging.getLogger(__name__)

T = TypeVar("T")

TIER_INI, TIER_ENV, TIER_CLI = 0, 1, 2

_ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_PLACEHOLDER_REF = re.compile(r"%\(([^()%]+)\)")


class ConfigError(Exception):
    """A configuration that cannot be used; str() is the one line shown to the user."""


@dataclass(frozen=True)
class Entry:
    key: str  # as written (a canonical name, an alias, or a placeholder name)
    raw: str  # the value as written ("" for a bare flag)
    has_value: bool
    source: str  # "app.ini:3", "--processes", "env UWSGI_PROCESSES"
    tier: int

    @property
    def option(self) -> Option[Any] | None:
        return o.declared(self.key)


@dataclass(frozen=True)
class SocketSpec:
    address: str
    protocol: str  # "http" or "uwsgi"
    source: str


@dataclass(frozen=True)
class MuleSpec:
    id: int
    program: str | None  # None: signal-only
    source: str


@dataclass(frozen=True)
class FarmSpec:
    name: str
    mule_ids: tuple[int, ...]
    source: str


def _value_error(option: Option[Any], entry: Entry, reason: str) -> ConfigError:
    return ConfigError(
        f"option '{option.name}': invalid value {entry.raw!r} (from {entry.source}): {reason}"
    )


@dataclass
class Config:
    """Typed option values plus what was derived from them. Read with ``get(OPTION)``."""

    values: dict[str, Any]
    sources: dict[str, str]
    entries: tuple[Entry, ...]
    placeholders: dict[str, str]
    opt: dict[str, Any]  # what ``uwsgi.opt`` shows
    warnings: list[str] = field(default_factory=list)
    sockets: list[SocketSpec] = field(default_factory=list)
    mules: list[MuleSpec] = field(default_factory=list)
    farms: list[FarmSpec] = field(default_factory=list)
    argv: tuple[str, ...] = ()

    def get(self, option: Option[T]) -> T:
        return cast(T, self.values[option.name])

    def source(self, option: Option[Any]) -> str:
        return self.sources.get(option.name, "default")

    def is_set(self, option: Option[Any]) -> bool:
        return option.name in self.sources


def _expand(raw: str, lookup: Mapping[str, str], environ: Mapping[str, str], depth: int = 0) -> str:
    """``$(ENV)`` first, then ``%(name)`` (uWSGI's order); unresolvable ones stay as written."""
    text = _ENV_REF.sub(lambda m: environ.get(m.group(1), m.group(0)), raw)
    if depth > 8 or "%(" not in text:
        return text

    def placeholder(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name not in lookup:
            return match.group(0)
        return _expand(lookup[name], lookup, environ, depth + 1)

    return _PLACEHOLDER_REF.sub(placeholder, text)


def _split_set(entry: Entry) -> tuple[str, str]:
    key, _, value = entry.raw.partition("=")
    return key.strip(), value


def _resolve_entries(entries: Sequence[Entry]) -> tuple[list[Entry], dict[str, str], list[str]]:
    """Turn ``set``/``set-placeholder`` and unknown keys into option entries or placeholders."""
    out: list[Entry] = []
    placeholders: dict[str, str] = {}
    warnings: list[str] = []
    referenced = {m.group(1).strip() for e in entries for m in _PLACEHOLDER_REF.finditer(e.raw)}
    for entry in entries:
        option = entry.option
        if option is o.SET or option is o.SET_PLACEHOLDER:
            out.append(entry)
            key, value = _split_set(entry)
            if o.declared(key) is not None:
                if option is o.SET_PLACEHOLDER:
                    raise ConfigError(
                        f"option 'set-placeholder': {key!r} is an option, not a placeholder "
                        f"(from {entry.source}); use 'set' to set an option"
                    )
                out.append(Entry(key, value, True, entry.source, entry.tier))
            else:
                placeholders.setdefault(key, value)
            continue
        if option is not None:
            out.append(entry)
            continue
        if entry.key in o.UWSGI_NOT_IMPLEMENTED:
            warnings.append(
                f"uWSGI option '{entry.key}' (from {entry.source}) is not implemented by "
                "muleteer yet: ignored"
            )
            continue
        if entry.tier == TIER_INI and entry.key in referenced:
            placeholders.setdefault(entry.key, entry.raw)  # uWSGI: the first occurrence wins
            continue
        if entry.tier == TIER_ENV:
            warnings.append(f"ignoring {entry.source}: no option named '{entry.key}'")
            continue
        hint = " (declare placeholders with set-placeholder)" if entry.tier == TIER_INI else ""
        raise ConfigError(f"unknown option '{entry.key}' (from {entry.source}){hint}")
    return out, placeholders, warnings


def _convert(option: Option[Any], entry: Entry) -> Any:
    if option.kind is Kind.FLAG:
        return o.to_bool(entry.raw) if entry.has_value else True
    if option.kind is Kind.OPTIONAL_LIST:
        return entry.raw
    if option.kind is Kind.VALUE and not entry.has_value:
        raise _value_error(option, entry, "a value is required")
    try:
        return option.convert(entry.raw)
    except OptionValueError as exc:
        raise _value_error(option, entry, str(exc)) from None


def _opt_value(entry: Entry) -> Any:
    """``uwsgi.opt`` values are bytes, or True for a valueless command-line flag."""
    if not entry.has_value and entry.tier == TIER_CLI:
        return True
    return entry.raw.encode("utf-8", "surrogateescape")


def build_config(
    raw_entries: Sequence[Entry],
    environ: Mapping[str, str] | None = None,
    argv: Sequence[str] = (),
) -> Config:
    environ = os.environ if environ is None else environ
    entries, placeholders, warnings = _resolve_entries(raw_entries)
    lookup: dict[str, str] = {}
    for entry in entries:
        lookup.setdefault(entry.key, entry.raw)
        option = entry.option
        if option is not None:
            lookup.setdefault(option.name, entry.raw)
    for key, value in placeholders.items():
        lookup.setdefault(key, value)
    expanded = [
        Entry(e.key, _expand(e.raw, lookup, environ), e.has_value, e.source, e.tier)
        for e in entries
    ]
    placeholders = {k: _expand(v, lookup, environ) for k, v in placeholders.items()}

    # Stable sort by tier keeps the written order inside each tier.
    ordered = sorted(expanded, key=lambda e: e.tier)
    values: dict[str, Any] = {name: opt.default for name, opt in o.REGISTRY.items()}
    sources: dict[str, str] = {}
    opt_dict: dict[str, Any] = {}
    for entry in ordered:
        option = entry.option
        assert option is not None
        converted = _convert(option, entry)
        if option.kind in (Kind.LIST, Kind.OPTIONAL_LIST):
            values[option.name] = (*values[option.name], converted)
        else:
            values[option.name] = converted
        sources[option.name] = entry.source
        if not option.implemented:
            warnings.append(
                f"option '{option.name}' (from {entry.source}) is not implemented by "
                "muleteer yet: ignored"
            )
        previous = opt_dict.get(entry.key)
        current = _opt_value(entry)
        if previous is None:
            opt_dict[entry.key] = current
        elif isinstance(previous, list):
            previous.append(current)
        else:
            opt_dict[entry.key] = [previous, current]
    for key, value in placeholders.items():
        opt_dict.setdefault(key, value.encode("utf-8", "surrogateescape"))

    if o.MASTER.name in sources and not values[o.MASTER.name]:
        warnings.append(
            f"master = false (from {sources[o.MASTER.name]}) has no effect: muleteer always "
            "runs a master"
        )
    config = Config(
        values=values,
        sources=sources,
        entries=tuple(ordered),
        placeholders=placeholders,
        opt=opt_dict,
        warnings=warnings,
        argv=tuple(argv),
    )
    config.sockets = _socket_specs(ordered)
    config.mules = _mule_specs(ordered)
    config.farms = _farm_specs(ordered, len(config.mules))
    _check_app_options(config)
    return config


def _socket_specs(entries: Sequence[Entry]) -> list[SocketSpec]:
    from muleteer.sockets import AddressError, parse_address

    specs: list[SocketSpec] = []
    for entry in entries:
        option = entry.option
        if option is o.SOCKET:
            protocol = "uwsgi"
        elif option in (o.HTTP_SOCKET, o.HTTP):
            protocol = "http"
        else:
            continue
        assert option is not None
        try:
            parse_address(entry.raw)
        except AddressError as exc:
            raise _value_error(option, entry, str(exc)) from None
        specs.append(SocketSpec(entry.raw.strip(), protocol, entry.source))
    return specs


def _mule_program(raw: str) -> str | None:
    """uWSGI's rule: ``x.py`` runs as a file, ``mod:func`` is called; anything else
    (``""``, ``true``, ...) makes a signal-only mule."""
    text = raw.strip()
    if text.endswith(".py") or ":" in text:
        return text
    return None


def _mule_specs(entries: Sequence[Entry]) -> list[MuleSpec]:
    specs: list[MuleSpec] = []
    for entry in entries:
        option = entry.option
        if option is o.MULE:
            program = _mule_program(entry.raw)
            if program is None and entry.raw.strip() and not o.to_bool(entry.raw):
                # "mule = false" is not a way to remove a mule in uWSGI either; say so.
                log.debug("mule value %r treated as a signal-only mule", entry.raw)
            specs.append(MuleSpec(len(specs) + 1, program, entry.source))
        elif option is o.MULES:
            for _ in range(int(entry.raw)):
                specs.append(MuleSpec(len(specs) + 1, None, entry.source))
    return specs


def _farm_specs(entries: Sequence[Entry], mule_count: int) -> list[FarmSpec]:
    specs: list[FarmSpec] = []
    for entry in entries:
        if entry.option is not o.FARM:
            continue
        name, sep, ids = entry.raw.partition(":")
        if not sep or not name.strip():
            raise ConfigError(
                f"option 'farm': invalid farm value ({entry.raw}) must be in the form "
                f"name:mule[,muleN]. (from {entry.source})"
            )
        mule_ids: list[int] = []
        for item in ids.split(","):
            text = item.strip()
            if not text.isdigit() or not 1 <= int(text) <= mule_count:
                raise ConfigError(
                    f"option 'farm': invalid mule id: {text or '(empty)'} in {entry.raw!r} "
                    f"(from {entry.source}; {mule_count} mule(s) configured)"
                )
            mule_ids.append(int(text))
        specs.append(FarmSpec(name.strip()[:254], tuple(mule_ids), entry.source))
    return specs


def _check_app_options(config: Config) -> None:
    if config.get(o.WSGI_FILE) and config.get(o.MODULE):
        raise ConfigError(
            f"options 'wsgi-file' (from {config.source(o.WSGI_FILE)}) and 'module' "
            f"(from {config.source(o.MODULE)}) both name an application: choose one"
        )
