"""Suite D3: an app whose import fails while a flag file says so (run with --lazy-apps,
so every worker imports it after fork).

``DE_FLAG`` names the flag file. Its content picks the failure: ``raise`` makes the
import raise; ``crash`` kills the importing process with SIGSEGV, as a broken C extension
would. Without the file the app answers 200 with its pid.
"""

import os
import signal

FLAG = os.environ["DE_FLAG"]

try:
    with open(FLAG) as handle:
        MODE = handle.read().strip()
except FileNotFoundError:
    MODE = ""

if MODE == "raise":
    raise RuntimeError("de_flagapp: the flag file says this import fails")
if MODE == "crash":
    os.kill(os.getpid(), signal.SIGSEGV)


def application(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
