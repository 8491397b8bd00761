"""A stand-in for ``jupyterhub-singleuser``: answers what the hub and the credits spawner
ask of a single-user server, at a fraction of a real server's cost.

bench/load.py runs at most 10 real Jupyter servers at once (2 cores); the other
simulated users' servers are this process, started by the same spawner (a
``Spawner.cmd`` override per user, so admission, holds, GPU assignment, the
process's environment and token, stop and settlement are the real ones).

What a server is asked, and what this answers:

- the hub's readiness check after ``start()`` (``User._wait_up``: GET
  ``{base_url}api``, any status below 500, the ``X-JupyterHub-Version`` header
  compared with the hub's) and the credits spawner's own (``_wait_until_answering``:
  GET ``{base_url}api``): 200 ``{"version": ...}`` with the hub's version header;
- the proxy's requests for anything else under ``{base_url}``: 200 (a tiny JSON);
- a stop: SIGINT (LocalProcessSpawner's first signal) or SIGTERM ends it at once.

It does not post activity to the hub or events to the credits service: the load
bench reports events for every user with the server's token itself. Everything
comes from the environment the spawner sets (``JUPYTERHUB_SERVICE_URL``: where
to listen); arguments (``--ServerApp.allow_root=True``...) are accepted and ignored.
Standard library only, so it starts in tens of milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlparse


def hub_version() -> str:
    """The hub's version (same venv), so the hub's version check sees no mismatch."""
    try:
        return version("jupyterhub")
    except PackageNotFoundError:
        return "0"


class StandInHandler(BaseHTTPRequestHandler):
    server_version = "jupyterhub-credits-standin/1"
    protocol_version = "HTTP/1.1"

    def _answer(self, body: bytes | None) -> None:
        prefix = self.server.base_url
        path = urlparse(self.path).path
        inside = path.startswith(prefix) or path + "/" == prefix
        payload = json.dumps({"version": "standin", "path": path}).encode()
        self.send_response(200 if inside else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", self.server.hub_version)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body is None:
            self.wfile.write(payload)

    def do_GET(self):  # noqa: N802 - the http.server API
        self._answer(None)

    def do_HEAD(self):  # noqa: N802
        self._answer(b"")

    def log_message(self, format, *args):  # noqa: A002 - quiet: the hub's log is shared
        pass


def main(argv: list[str] | None = None) -> int:
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    server = ThreadingHTTPServer((url.hostname or "127.0.0.1", url.port), StandInHandler)
    server.daemon_threads = True
    server.base_url = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", url.path or "/")
    server.hub_version = hub_version()

    def stop(signum, frame):
        # serve_forever() runs in this thread: leave at once, as a stopped server does.
        server.server_close()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"stand-in server for {os.environ.get('JUPYTERHUB_USER')} at "
          f"{url.geturl()}", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
