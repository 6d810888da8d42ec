"""A real nginx for the tests, in front of muleteer: one config skeleton, started in its
own process group on a free port and stopped at the end.

    with Nginx(workdir, locations) as port:   # locations: the server block's inside
        ...

It runs its workers as root (`user root;`): muleteer's unix sockets are 0600 by design,
and the tests run as root; nginx ignores the directive with a warning otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from muleteer.pytest_plugin import free_port, wait_for

CONF = """
worker_processes 1;
user root;
daemon off;
error_log {wd}/error.log warn;
pid {wd}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {wd}/body;
    proxy_temp_path {wd}/proxy;
    fastcgi_temp_path {wd}/fastcgi;
    uwsgi_temp_path {wd}/uwsgi;
    scgi_temp_path {wd}/scgi;
{http}
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"""

UWSGI_PARAMS = "/etc/nginx/uwsgi_params"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


class Nginx:
    def __init__(self, workdir: Path, locations: str, http: str = "") -> None:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed (.ci/run installs it with apt-get)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            CONF.format(wd=workdir, port=self.port, http=http, locations=locations)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def error_log(self) -> str:
        try:
            return (self.workdir / "error.log").read_text()
        except OSError:
            return ""

    def __enter__(self) -> int:
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.workdir), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = self.proc

        def up() -> bool:
            assert proc.poll() is None, f"nginx exited:\n{self.error_log()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, 10, what="nginx")
        return self.port

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
