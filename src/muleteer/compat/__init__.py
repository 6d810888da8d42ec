"""Compatibility modules that muleteer installs for code written for uWSGI.

Each module here stands in for a module that uWSGI applications import (for example
``uwsgidecorators``); the server places it in ``sys.modules`` under the name the
application expects, on top of muleteer's own ``uwsgi`` module.
"""

from __future__ import annotations
