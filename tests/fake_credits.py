"""A stand-in for the credits service as a single-user server sees it, over real HTTP.

Runs a stdlib threading HTTP server on 127.0.0.1 and records every request. It
answers ``POST /api/events`` like the service's contract (one outcome per event,
in order; a key already seen is ``duplicate``), ``GET /api/me`` with a fixed
account, ``GET /api/sessions/{server}[?runs=K1,K2]`` (the server status of the
issue 9 contract, from ``statuses`` and ``outcomes``) and ``POST
/api/sessions/{server}/extend`` (answers queued in ``extend_answers``, else 200).
It can be told to fail the next N event posts with a status (e.g. 503), to drop the
connection without an answer and without counting the events (``"drop"``), or after
having counted them (``"drop-after"``: the client cannot know they arrived, so it
must resend them and get ``duplicate``); ``fail_gets`` does the same to status
requests, and clearing ``answering`` holds them until it is set again.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN = "secret-server-token-0123456789"


class FakeCreditsService:
    def __init__(self, token: str = TOKEN):
        self.token = token
        self.requests: list[dict] = []  # every request: method, path, authorization, body
        self.earned: dict[str, dict] = {}  # key -> event, counted once
        self.failures: list[object] = []  # what to do with the next event posts: int | "drop" | ...
        self.me = {"user": "alice", "balance": "12.50", "sessions": []}
        self.user = "alice"
        self.statuses: dict[str, dict] = {}  # server label -> fields over status()'s defaults
        self.outcomes: dict[str, dict] = {}  # event key -> {"outcome", "points", "rule", ...}
        self.get_failures: list[object] = []  # what to do with the next status requests
        self.extend_answers: list[tuple[int, dict]] = []  # the next extend answers
        self.answering = threading.Event()  # cleared: status requests wait (single-flight)
        self.answering.set()
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
                    return self._answer(403, {"status": 403, "message": "forbidden"})
                url = urlsplit(self.path)
                if url.path.rstrip("/").endswith("/api/me"):
                    return self._answer(200, service.me)
                parts = url.path.rstrip("/").split("/")
                if len(parts) >= 2 and parts[-2] == "sessions":
                    service.answering.wait(10)
                    failure = service._pop(service.get_failures)
                    if failure == "drop":
                        return self._drop()
                    if isinstance(failure, int):
                        return self._answer(failure, {"status": failure, "message": "injected"})
                    keys = ",".join(parse_qs(url.query).get("runs", [])).split(",")
                    return self._answer(200, service.status(unquote(parts[-1]), keys))
                return self._answer(404, {"status": 404, "message": "not found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                events = json.loads(body) if body else None
                if self.path.rstrip("/").endswith("/extend"):
                    service._record(self, events)
                    if self.headers.get("Authorization") != f"token {service.token}":
                        return self._answer(403, {"status": 403, "message": "forbidden"})
                    status, answer = service._pop(service.extend_answers) or (
                        200, {"session": None, "message": "Extended.", "duplicate": False})
                    return self._answer(status, answer)
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
        return self._pop(self.failures)

    def _pop(self, queue: list):
        with self._lock:
            return queue.pop(0) if queue else None

    def status(self, label: str, run_keys=()) -> dict:
        """``GET /api/sessions/{label}``: defaults, overridden by ``statuses[label]``."""
        with self._lock:
            answer = {"user": self.user, "server": "" if label == "default" else label,
                      "server_label": label, "available": "12.50", "reserved": "0.00",
                      "session": None, "stop": None, "warning_thresholds": [600, 60],
                      "earnings_today": None,
                      "runs": [dict(self.outcomes[key], key=key) for key in run_keys
                               if key in self.outcomes],
                      "now": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            answer.update(self.statuses.get(label, {}))
            return answer

    def status_requests(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests
                    if r["method"] == "GET" and "/api/sessions/" in r["path"]]

    def _record(self, handler, body, failure=None) -> None:
        """``events`` is the JSON body of an event post, ``body`` that of any request."""
        with self._lock:
            self.requests.append({"method": handler.command, "path": handler.path,
                                  "authorization": handler.headers.get("Authorization"),
                                  "events": body, "body": body, "failure": failure})

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
            return [r for r in self.requests
                    if r["method"] == "POST" and r["path"].rstrip("/").endswith("/events")]

    def extend_posts(self) -> list[dict]:
        with self._lock:
            return [r for r in self.requests
                    if r["method"] == "POST" and r["path"].rstrip("/").endswith("/extend")]
