"""muleteer: a Python application server for code written for uWSGI."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
