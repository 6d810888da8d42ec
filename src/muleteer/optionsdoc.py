"""Render the options reference (docs/options.md) from the registry.

A test regenerates it and fails when the committed file differs, so the reference can
never drift from the code.
"""

from __future__ import annotations

from muleteer import options as o

CATEGORIES = {
    "config": "Configuration files",
    "sockets": "Sockets",
    "app": "The application",
    "processes": "Processes",
    "security": "Security",
    "requests": "Requests",
    "logging": "Logging",
    "mules": "Mules and farms",
    "signals": "Signals, timers, cron and file monitors",
    "stats": "Observability and control",
}


def _default(option: o.Option[object]) -> str:
    value = option.default
    if option.kind not in (o.Kind.VALUE, o.Kind.OPTIONAL_VALUE):
        return ""
    if value is None or value == "":
        return "not set"
    return f"`{value}`"


def render() -> str:
    lines = [
        "# Options",
        "",
        "Generated from `src/muleteer/options.py` by `make docs-options`; do not edit.",
        "",
        "Every option can be given on the command line (`--name value`, `--name=value`, or",
        "`--flag`), in an INI file (`name = value` in the `[uwsgi]` section; repeated keys",
        "accumulate), or as an environment variable (`UWSGI_NAME` or `MULETEER_NAME`, upper",
        "case with `-` as `_`). Precedence: defaults < INI < environment < command line.",
        'List options ("many") keep every value in that order.',
        "",
    ]
    for category, title in CATEGORIES.items():
        members = [opt for opt in o.REGISTRY.values() if opt.category == category]
        if not members:
            continue
        lines += [
            f"## {title}",
            "",
            "| option | kind | default | description |",
            "|---|---|---|---|",
        ]
        for opt in members:
            names = [f"`{opt.name}`"] + [f"`{a}`" for a in opt.aliases]
            if opt.short:
                names.append(f"`-{opt.short}`")
            kind = {
                o.Kind.FLAG: "flag",
                o.Kind.VALUE: "value",
                o.Kind.LIST: "many",
                o.Kind.OPTIONAL_LIST: "many, value optional",
                o.Kind.OPTIONAL_VALUE: "value, optional",
            }[opt.kind]
            notes = []
            if opt.muleteer_only:
                notes.append("muleteer only")
            if not opt.implemented:
                notes.append("**not implemented yet**: accepted with a warning")
            text = opt.help.replace("|", "\\|")
            if notes:
                text += " (" + "; ".join(notes) + ")"
            lines.append(f"| {', '.join(names)} | {kind} | {_default(opt)} | {text} |")
        lines.append("")
    lines += [
        "## uWSGI options that are not implemented",
        "",
        "These are accepted with a warning that names them (never silently ignored):",
        "",
        ", ".join(f"`{name}`" for name in sorted(o.UWSGI_NOT_IMPLEMENTED)),
        "",
    ]
    return "\n".join(lines)
