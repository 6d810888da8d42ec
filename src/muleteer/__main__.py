"""``python -m muleteer``."""

from __future__ import annotations

import sys

from muleteer.cli import main

sys.exit(main())
