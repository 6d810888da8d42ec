"""Mule of suite F3: writes bcf_priv's report (ids, parent-death signal, setuid(0)) to the
file named by BCF_MULE_OUT, then idles. Imports only what the master already imported."""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bcf_priv


def main() -> None:
    path = os.environ["BCF_MULE_OUT"]
    data = json.dumps(bcf_priv.report())
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    os.rename(path + ".tmp", path)
    while True:
        time.sleep(3600)


main()
