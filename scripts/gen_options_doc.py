"""Print docs/options.md, generated from the option registry (`make docs-options`)."""

from __future__ import annotations

import sys

from muleteer.optionsdoc import render

sys.stdout.write(render())
