"""uWSGI-flavoured INI files: a small reader of our own, not ``configparser``.

uWSGI's INI differs from ``configparser`` on purpose, and real files depend on it:
repeated keys are all kept in order (``mule = true`` twice is two mules), a line without
``=`` is a flag, there are no inline comments (``a = b ; c`` keeps ``b ; c``), only the
requested section (default ``uwsgi``) is read, and magic variables such as ``%d`` (the
file's directory) are substituted while the file is read. ``%(name)`` and ``$(ENV)`` are
left for ``config`` to expand once every source is known.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import time
from dataclasses import dataclass

from muleteer import __version__

log = logging.getLogger(__name__)


class IniError(Exception):
    """An INI file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class IniEntry:
    key: str
    value: str
    has_value: bool  # False for a bare ``key`` line (a flag)
    path: str
    lineno: int

    @property
    def source(self) -> str:
        return f"{self.path}:{self.lineno}"


def split_spec(spec: str, last_file: str | None) -> tuple[str, str]:
    """``file.ini``, ``file.ini:section`` or ``:section`` (last file read) -> (path, section)."""
    if spec.startswith(":"):
        if last_file is None:
            raise IniError(f"ini {spec!r}: no INI file was loaded before to take the section from")
        return last_file, spec[1:] or "uwsgi"
    if os.path.exists(spec) or ":" not in spec:
        return spec, "uwsgi"
    path, section = spec.rsplit(":", 1)
    return path, section or "uwsgi"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _magic_table(path: str, given: str, section: str) -> dict[str, str]:
    """The single-letter magic variables of uWSGI's config files (``%d``, ``%n``, ...)."""
    abspath = os.path.abspath(path)
    directory = os.path.dirname(abspath)
    filename = os.path.basename(abspath)
    name, ext = os.path.splitext(filename)
    now = time.time()
    table = {
        "d": directory.rstrip("/") + "/",
        "p": abspath,
        "s": filename,
        "n": name,
        "e": ext.lstrip("."),
        "c": os.path.basename(directory),
        "o": given,
        "x": f"{given}:{section}",
        "h": socket.gethostname(),
        "v": os.getcwd(),
        "V": __version__,
        "k": str(os.cpu_count() or 1),
        "t": str(int(now)),
        "T": str(int(now * 1_000_000)),
        "u": str(os.getuid()),
        "U": _user_name(os.getuid()),
        "g": str(os.getgid()),
        "G": _group_name(os.getgid()),
        "i": str(os.stat(abspath).st_ino),
        "[": "\x1b",
        "%": "%",
    }
    parts = [p for p in directory.split("/") if p]
    for index in range(10):
        table[str(index)] = parts[index] if index < len(parts) else ""
    return table


def substitute_magic(text: str, table: dict[str, str]) -> str:
    """Replace ``%X`` magic variables; ``%(`` is kept for later; unknown ``%X`` become ""."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "%" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        letter = text[i + 1]
        if letter == "(":
            out.append("%(")
        else:
            # uWSGI drops unknown magic variables rather than keeping them literally.
            out.append(table.get(letter, ""))
        i += 2
    return "".join(out)


def parse_ini_text(text: str, path: str, section: str, magic: dict[str, str]) -> list[IniEntry]:
    """Entries of `section` in order, repeated keys kept, magic variables substituted."""
    entries: list[IniEntry] = []
    current: str | None = None
    found = False
    for lineno, raw in enumerate(substitute_magic(text, magic).split("\n"), start=1):
        line = raw.strip(" \t\r")
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            found = found or current == section
            continue
        if current != section:
            continue
        if "=" in line:
            key, value = line.split("=", 1)
            entries.append(IniEntry(key.strip(), value.strip(" \t"), True, path, lineno))
        else:
            entries.append(IniEntry(line, "", False, path, lineno))
    if not found:
        log.warning("can't find section %r in INI configuration file %s", section, path)
    return entries


def read_ini(spec: str, last_file: str | None = None) -> tuple[str, list[IniEntry]]:
    """Read ``file.ini[:section]``; returns (path read, entries). Raises IniError."""
    path, section = split_spec(spec, last_file)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise IniError(f"cannot read INI file {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise IniError(f"INI file {path!r} is not valid UTF-8") from None
    return path, parse_ini_text(text, path, section, _magic_table(path, spec, section))
