"""An HTTP server on loopback, served from a daemon thread of this process:
the fake and hostile registries' shared plumbing."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-answer (a refused oversized body, a closed
        # keep-alive connection, a pull cancelled or timed out) is what these
        # tests provoke; anything else is still reported.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ServerThread:
    """`handler` served on `bind` (a free port) until stop()."""

    def __init__(self, bind: str, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self.bind = bind
        self._server = _QuietServer((bind, 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        """host:port it listens on."""
        return f"{self.bind}:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
