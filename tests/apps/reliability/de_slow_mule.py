"""Suite E: a programmed mule that works slowly on numbered messages and records each one.

At start it appends "P <pid>" to the file named by ``OUT``. For each message (a decimal
id) it appends "G <id>" when it got it, works ``DELAY`` seconds (default 1 ms), then
appends "D <id>". Each line is one ``os.write`` on a file opened with ``O_APPEND``, so
nothing is buffered in the process: a SIGKILL loses at most the message in hand. The
control message ``PAUSE:<seconds>`` makes it append "Z <seconds>" and stop reading for
that long. It runs
unchanged under uWSGI 2.0 (the anchor of E1).
"""

import os
import time

import uwsgi

OUT = os.environ["OUT"]
DELAY = float(os.environ.get("DELAY", "0.001"))

fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, b"P %d\n" % os.getpid())
while True:
    message = uwsgi.mule_get_msg()
    if message.startswith(b"PAUSE:"):
        os.write(fd, b"Z " + message[6:] + b"\n")
        time.sleep(float(message[6:]))
        continue
    os.write(fd, b"G " + message + b"\n")
    time.sleep(DELAY)
    os.write(fd, b"D " + message + b"\n")
