"""Preparing the interpreter for the app (chdir, sys.path, env) and loading the app.

A ``--wsgi-file`` is executed as a module named ``uwsgi_file_<path>`` (the name uWSGI
gives it, which some code checks); ``--module`` is imported normally. Problems become
:class:`AppLoadError` with one line that names the option and its source.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import site
import sys
from collections.abc import Callable
from typing import Any

from muleteer import options as o
from muleteer.config import Config

log = logging.getLogger(__name__)

WSGIApp = Callable[..., Any]


class AppLoadError(Exception):
    """The application (or an import) could not be loaded; str() is one clear line."""


def prepare(config: Config) -> None:
    """chdir, environment, virtualenv and sys.path, before anything of the app is imported."""
    chdir = config.get(o.CHDIR)
    if chdir:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise AppLoadError(
                f"option 'chdir': cannot chdir to {chdir!r} (from {config.source(o.CHDIR)}): "
                f"{exc.strerror}"
            ) from None
    for item in config.get(o.ENV):
        key, _, value = item.partition("=")
        os.environ[key.strip()] = value
    venv = config.get(o.VIRTUALENV)
    if venv:
        _add_virtualenv(venv, config.source(o.VIRTUALENV))
    paths: tuple[str, ...] = config.get(o.PYTHONPATH)
    for path in reversed(paths):
        absolute = os.path.abspath(path)
        if absolute not in sys.path:
            sys.path.insert(0, absolute)
    # The directory we run from is importable, as it is for `python app.py` and for uWSGI.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _add_virtualenv(venv: str, source: str) -> None:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.join(venv, "lib", version, "site-packages")]
    found = [c for c in candidates if os.path.isdir(c)]
    if not found:
        raise AppLoadError(
            f"option 'virtualenv': {venv!r} (from {source}) has no lib/{version}/site-packages "
            f"(is it a virtualenv for this Python, {sys.version.split()[0]}?)"
        )
    for path in found:
        site.addsitedir(path)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def import_module(name: str, option: str, source: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"option '{option}': no module named {name!r} (from {source})"
            ) from None
        log.exception("importing %r (option '%s') failed", name, option)
        raise AppLoadError(
            f"option '{option}': importing {name!r} failed: {_describe(exc)}"
        ) from exc
    except Exception as exc:
        log.exception("importing %r (option '%s') failed", name, option)
        raise AppLoadError(
            f"option '{option}': importing {name!r} failed: {_describe(exc)}"
        ) from exc


def module_name_for_file(path: str) -> str:
    return "uwsgi_file_" + re.sub(r"[^A-Za-z0-9_]", "_", os.path.splitext(path)[0])


def _load_file(path: str, source: str) -> Any:
    if not os.path.isfile(path):
        raise AppLoadError(f"option 'wsgi-file': {path!r} (from {source}): no such file")
    name = module_name_for_file(path)
    spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    if spec is None or spec.loader is None:
        raise AppLoadError(f"option 'wsgi-file': {path!r} (from {source}) is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        log.exception("loading %r failed", path)
        raise AppLoadError(
            f"option 'wsgi-file': loading {path!r} failed: {_describe(exc)}"
        ) from exc
    return module


def load_app(config: Config) -> WSGIApp | None:
    """The WSGI callable, or None when no app is configured."""
    name = config.get(o.CALLABLE)
    wsgi_file = config.get(o.WSGI_FILE)
    module_spec = config.get(o.MODULE)
    if wsgi_file:
        module = _load_file(wsgi_file, config.source(o.WSGI_FILE))
        where = f"wsgi-file {wsgi_file!r}"
    elif module_spec:
        module_name, _, attr = module_spec.partition(":")
        import_module(module_name, "module", config.source(o.MODULE))
        module = sys.modules[module_name]
        name = attr or name
        where = f"module {module_name!r}"
    else:
        return None
    app = getattr(module, name, None)
    if app is None and name.endswith("()"):
        factory = getattr(module, name[:-2], None)
        app = factory() if callable(factory) else None
    if app is None or not callable(app):
        raise AppLoadError(f"{where} has no callable named {name!r} (option 'callable')")
    return app  # type: ignore[no-any-return]


def load_everything(config: Config, *, shared: bool, app: bool) -> WSGIApp | None:
    """shared-imports (when `shared`), then imports and the app (when `app`)."""
    if shared:
        for name in config.get(o.SHARED_IMPORT):
            import_module(name, "shared-import", config.source(o.SHARED_IMPORT))
    if not app:
        return None
    for name in config.get(o.IMPORT):
        import_module(name, "import", config.source(o.IMPORT))
    return load_app(config)
