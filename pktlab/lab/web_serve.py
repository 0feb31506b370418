"""The web servers of :class:`pktlab.lab.web.WebServer`, run in a lab's server host as a program of its own.

``python web_serve.py DIR CERT KEY ADDRESS TLS_PORT HTTP_PORT``: Python's ``ThreadingHTTPServer`` serving DIR over
HTTPS (CERT and KEY) and over plain HTTP, a thread per connection, so a connection a firewall left half-open (its
ClientHello dropped) holds up no other.  It prints ``ready`` once both listen and runs until it is killed.
"""

from __future__ import annotations

import functools
import socketserver
import ssl
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Quiet(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # a connection that sends nothing (its first bytes dropped on the way) ends after a minute

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the standard library's name
        return None


class Server(ThreadingHTTPServer):
    def server_bind(self) -> None:
        """Bind without http.server's reverse lookup of the address (5 s to time out in a lab without DNS)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def main(argv: list[str]) -> int:
    folder, cert, key, address, tls_port, http_port = argv
    handler = functools.partial(Quiet, directory=folder)
    secure = Server((address, int(tls_port)), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    # the handshake in the connection's own thread (its first read), not in the accepting one
    secure.socket = context.wrap_socket(secure.socket, server_side=True, do_handshake_on_connect=False)
    plain = Server((address, int(http_port)), handler)
    for server in (secure, plain):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
