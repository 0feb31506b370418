"""Web traffic in a lab: HTTPS and HTTP servers on the server host, fetched with curl from the client.

:class:`WebServer` gives a lab's server a self-signed certificate for some names (made by Debian's ``openssl``),
serves a file over HTTPS and over plain HTTP with Python's ``http.server`` (a thread per connection: a connection
a firewall left half-open holds up no other; :mod:`pktlab.lab.web_serve`), and :meth:`WebServer.fetch`
downloads it from the client with ``curl``, asking for a name (``--resolve``: the TLS ClientHello's SNI and the HTTP
Host header carry it), bounded in time.  What a user would see comes back too: curl's own error line when the
download fails (``curl: (35) Recv failure: Connection reset by peer``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LabError, MissingToolError
from .network import wait_until

DATA = "data.bin"


@dataclass(frozen=True)
class FetchResult:
    """One download: what curl said."""

    name: str  # the name asked for (SNI and Host)
    url: str
    ok: bool  # curl succeeded and the server answered 200
    bytes: int  # bytes received
    seconds: float  # curl's total time
    error: str | None  # curl's error line, as a user sees it (None: it worked)

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else 0.0


class WebServer:
    """HTTPS and HTTP on a lab's server for ``names``, a ``size``-byte file at ``/data.bin`` (see the module)."""

    def __init__(self, lab: Any, names: list[str], *, size: int = 16 << 20, tls_port: int = 8443,
                 http_port: int = 8080) -> None:  # fmt: skip
        for tool in ("openssl", "curl"):
            if shutil.which(tool) is None:
                raise MissingToolError(f"{tool} is not installed; run `make setup` (apt-get install {tool})")
        if not names:
            raise LabError("a web server needs at least one name for its certificate")
        self.lab, self.names, self.size = lab, list(names), size
        self.tls_port, self.http_port = tls_port, http_port
        self.dir = Path(tempfile.mkdtemp(prefix="pktlab-web-"))
        self.dir.chmod(0o755)
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        self.procs: list[subprocess.Popen[str]] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        san = ",".join(f"DNS:{n}" for n in self.names)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        f"/CN={self.names[0]}", "-addext", f"subjectAltName={san}", "-keyout", str(self.key), "-out",
                        str(self.cert)], capture_output=True, check=True, timeout=60)  # fmt: skip
        self.key.chmod(0o644)  # the lab's server reads it as the lab's user
        block = bytes(range(256)) * 256
        with open(self.dir / DATA, "wb") as f:
            for _ in range(self.size // len(block)):
                f.write(block)
            f.write(block[: self.size % len(block)])
        server = self.lab.server
        program = Path(__file__).with_name("web_serve.py")
        proc = server.popen([sys.executable, str(program), str(self.dir), str(self.cert), str(self.key), server.addr,
                             str(self.tls_port), str(self.http_port)], stderr=subprocess.DEVNULL)  # fmt: skip
        self.procs.append(proc)
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            raise LabError("the lab's web server did not start (its ports taken by another program of the lab?)")
        for tls in (True, False):
            if not wait_until(lambda tls=tls: self.fetch(self.names[0], tls=tls, path="/cert.pem", timeout=5).ok, 20,
                              0.2):  # fmt: skip
                raise LabError(f"the lab's {'HTTPS' if tls else 'HTTP'} server did not answer within 20 s")

    def url(self, name: str, *, tls: bool = True, path: str = f"/{DATA}") -> str:
        return f"{'https' if tls else 'http'}://{name}:{self.tls_port if tls else self.http_port}{path}"

    def fetch(self, name: str, *, tls: bool = True, path: str = f"/{DATA}", timeout: float = 30.0) -> FetchResult:
        """Download ``path`` from the client asking for ``name``; curl's figures, or its error line."""
        port = self.tls_port if tls else self.http_port
        url = self.url(name, tls=tls, path=path)
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total} %{http_code}", "--max-time",
                str(timeout), "--resolve", f"{name}:{port}:{self.lab.server.addr}", "--cacert", str(self.cert), url]
        t0 = time.monotonic()
        proc = self.lab.client.run(argv, timeout=timeout + 10, check=False)
        parts = proc.stdout.split()
        size, secs, code = (int(parts[0]), float(parts[1]), parts[2]) if len(parts) == 3 else (0, 0.0, "000")
        error = proc.stderr.strip().splitlines()[-1] if proc.returncode != 0 and proc.stderr.strip() else None
        if proc.returncode != 0 and error is None:
            error = f"curl: exit code {proc.returncode}"
        ok = proc.returncode == 0 and code == "200"
        if proc.returncode == 0 and not ok:
            error = f"the server answered HTTP {code}"
        return FetchResult(name, url, ok, size, secs or time.monotonic() - t0, error)

    def stop(self) -> None:
        """Stop the servers (by PID) and remove the files."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
