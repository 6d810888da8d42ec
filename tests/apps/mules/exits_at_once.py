"""A programmed mule that records its start and returns at once (respawn back-off)."""

from marks import record

record("start", program="exits_at_once.py")
