"""A stand-in for the credits service's event intake and ``/api/me``, over real HTTP.

Runs a stdlib threading HTTP server on 127.0.0.1 and records every request. It
answers ``POST /api/events`` like the service's contract (one outcome per event,
in order; a key already seen is ``duplicate``) and ``GET /api/me`` with a fixed
account. It can be told to fail the next N event posts with a status (e.g. 503),
to drop the connection without an answer and without counting the events
(``"drop"``), or after having counted them (``"drop-after"``: the client cannot know they
arrived, so it must resend them and get ``duplicate``).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "secret-server-token-0123456789"


class FakeCreditsService:
    def __init__(self, token: str = TOKEN):
        self.token = token
        self.requests: list[dict] = []  # every request: method, path, authorization, body
        self.earned: dict[str, dict] = {}  # key -> event, counted once
        self.failures: list[object] = []  # what to do with the next event posts: int | "drop" | ...
        self.me = {"user": "alice", "balance": "12.50", "sessions": []}
        self._lock = threading.Lock()  # the HTTP server answers on its own threads
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _answer(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(2)

            def do_GET(self):
                service._record(self, None)
                if self.headers.get("Authorization") != f"token {service.token}":
                    return self._answer(403, {"error": "forbidden"})
                if self.path.rstrip("/").endswith("/api/me"):
                    return self._answer(200, service.me)
                return self._answer(404, {"error": "not found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                events = json.loads(body) if body else None
                failure = service._next_failure()
                service._record(self, events, failure)
                if failure == "drop":
                    return self._drop()
                if self.headers.get("Authorization") != f"token {service.token}":
                    return self._answer(403, {"error": "forbidden"})
                if isinstance(failure, int):
                    return self._answer(failure, {"error": "injected"})
                outcomes = service._intake(events)
                if failure == "drop-after":
                    return self._drop()
                return self._answer(200, outcomes)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.api_url = f"{self.url}/services/credits/api"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, *failures) -> None:
        with self._lock:
            self.failures.extend(failures)

    def _next_failure(self):
        with self._lock:
            return self.failures.pop(0) if self.failures else None

    def _record(self, handler, events, failure=None) -> None:
        with self._lock:
            self.requests.append({"method": handler.command, "path": handler.path,
                                  "authorization": handler.headers.get("Authorization"),
                                  "events": events, "failure": failure})

    def _intake(self, events) -> list[dict]:
        outcomes = []
        with self._lock:
            for event in events:
                if event["key"] in self.earned:
                    outcomes.append({"key": event["key"], "outcome": "duplicate", "points": 0,
                                     "reason": "already counted"})
                else:
                    self.earned[event["key"]] = event
                    outcomes.append({"key": event["key"], "outcome": "earned", "points": 1,
                                     "reason": None})
        return outcomes

    def event_posts(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["method"] == "POST"]
