"""The training-runs journal: what ``CreditsCallback`` ran, for the JupyterLab panel.

A kernel running :class:`~jupyterhub_credits.keras.CreditsCallback` appends one JSON
line per finished ``fit`` to ``<jupyter runtime dir>/jupyterhub-credits-runs.jsonl``::

    {"server": "<server id>", "key": "training_run:…", "started_at": iso, "ended_at": iso,
     "epochs": 3, "steps": 12, "duration_s": 4.2, "metrics": {"loss": 0.3}, "logdir": "/abs"}

The kernel's own reporter delivers the event; the journal only lets the server tell
the browser which runs there were, because the event itself travels from the kernel
to the service without passing through the server. The server reads the tail of the
journal (:func:`read_runs`), keeps this server's lines (several servers of one user
may share a runtime directory), and says whether each run's event is still *held*
(waiting in a reporter's state file to be sent) or *sent*. The service tells the
outcome (points earned, or why not) once asked with the key.

This module imports neither jupyter_server nor Keras: kernels import it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .reporter import STATE_PREFIX, runtime_dir

log = logging.getLogger(__name__)

JOURNAL_NAME = "jupyterhub-credits-runs.jsonl"
#: Lines read from the end of the journal; the panel shows the newest ``SHOWN``.
TAIL_LINES = 200
SHOWN = 10
#: Bytes read from the end to find ``TAIL_LINES`` lines (a line is ~300 bytes).
_TAIL_BYTES = 256 * 1024
#: Outcome fields the browser gets, whatever else the service adds.
OUTCOME_FIELDS = ("outcome", "points", "rule", "reason")
#: A key the service can be asked about (``runs=K1,K2``): an event key as its intake
#: takes them, without the comma that separates them. Anything else in the journal is
#: never sent: one odd line must not make every poll a 400.
ASKABLE_KEY = re.compile(r"[^\s#,\x00-\x1f\x7f]{1,200}")


def server_id(environ: Mapping[str, str] | None = None) -> str:
    """This server's id in events and the journal: the spawner's session, else user/name."""
    env = os.environ if environ is None else environ
    return env.get("JUPYTERHUB_CREDITS_SESSION") or \
        f"{env.get('JUPYTERHUB_USER', '')}/{env.get('JUPYTERHUB_SERVER_NAME', '')}"


def journal_path(directory: str | os.PathLike | None = None) -> Path:
    return (Path(directory) if directory is not None else runtime_dir()) / JOURNAL_NAME


def append_run(record: Mapping, path: str | os.PathLike | None = None) -> Path:
    """Append one run as one line; raises OSError (the caller decides how loud to be).

    One ``write`` on an ``O_APPEND`` descriptor: lines of concurrent kernels do not
    interleave on a local file system, and a crash mid-write leaves at worst a torn
    last line, which :func:`read_runs` skips (and which the next line does not join).
    """
    target = Path(path) if path is not None else journal_path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = (json.dumps(dict(record), separators=(",", ":"), allow_nan=False) + "\n").encode()
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # end the torn line first, or this one is lost with it
        os.write(fd, line)
    finally:
        os.close(fd)
    return target


def _tail_lines(path: Path, count: int) -> list[bytes]:
    """The last ``count`` complete-or-torn lines of a file, without reading all of it."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            start = max(0, size - _TAIL_BYTES)
            handle.seek(start)
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first one is cut at the window's edge
    return [line for line in lines if line.strip()][-count:]


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _text(value, limit: int = 4096):
    return value[:limit] if isinstance(value, str) else None


def _clean(record: dict) -> dict:
    """A journal line as the browser gets it: known fields of known types only.

    The journal is written by the user's kernels, so anything may be in it; what the
    panel gets is bounded and typed.
    """
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    return {"key": record["key"][:200],
            "started_at": _text(record.get("started_at"), 64),
            "ended_at": _text(record.get("ended_at"), 64),
            "epochs": _number(record.get("epochs")),
            "steps": _number(record.get("steps")),
            "duration_s": _number(record.get("duration_s")),
            "metrics": {str(k)[:100]: v for k, v in list(metrics.items())[:50]
                        if _number(v) is not None},
            "logdir": _text(record.get("logdir"))}


def read_runs(path: str | os.PathLike, server: str, *, shown: int = SHOWN,
              tail: int = TAIL_LINES) -> list[dict]:
    """This server's newest runs (newest first) among the journal's last ``tail`` lines."""
    runs, seen = [], set()
    for raw in reversed(_tail_lines(Path(path), tail)):
        try:
            record = json.loads(raw)
        except ValueError:  # a torn line (a kernel killed mid-write) or garbage
            continue
        if not isinstance(record, dict) or record.get("server") != server or \
                not isinstance(record.get("key"), str) or record["key"] in seen:
            continue
        seen.add(record["key"])
        runs.append(_clean(record))
        if len(runs) >= shown:
            break
    return runs


def held_keys(directory: str | os.PathLike) -> set[str]:
    """Keys still waiting in any reporter state file of the runtime directory."""
    keys: set[str] = set()
    for state in Path(directory).glob(f"{STATE_PREFIX}*.json"):
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):  # being replaced right now, or removed: not held there
            continue
        events = data.get("events") if isinstance(data, dict) else None
        for event in events if isinstance(events, list) else ():
            if isinstance(event, dict) and isinstance(event.get("key"), str):
                keys.add(event["key"])
    return keys


def outcome_of(answer) -> dict | None:
    """The four outcome fields of a service answer about one event; None if it is not one."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("outcome"), str):
        return None
    return {field: answer.get(field) for field in OUTCOME_FIELDS}


class RunsView:
    """The runs of one server with their delivery state and the outcomes learnt so far.

    ``reporter`` is the server's own (it holds the runs of dead kernels it adopted).
    Outcomes are final once known, so they are remembered (bounded) and never asked
    for again.
    """

    MAX_OUTCOMES = 1000

    def __init__(self, server: str, directory: str | os.PathLike | None = None, *,
                 reporter=None):
        self.server = server
        self.directory = Path(directory) if directory is not None else None
        self.reporter = reporter
        self.outcomes: dict[str, dict] = {}

    def _directory(self) -> Path:
        return self.directory if self.directory is not None else runtime_dir()

    def runs(self) -> list[dict]:
        """The newest runs with ``state`` and ``outcome`` (``tensorboard_url`` is added later)."""
        directory = self._directory()
        try:
            runs = read_runs(journal_path(directory), self.server)
        except OSError as error:
            log.warning("credits: cannot read the runs journal in %s: %s", directory, error)
            return []
        if not runs:
            return []
        held = held_keys(directory)
        if self.reporter is not None:
            held.update(self.reporter.pending_keys())
        for run in runs:
            key = run["key"]
            outcome = self.outcomes.get(key)
            if outcome is None and self.reporter is not None:
                outcome = outcome_of(self.reporter.outcome(key))
                if outcome is not None:
                    self._remember(key, outcome)
            run["state"] = "held" if key in held else "sent"
            run["outcome"] = outcome
        return runs

    def lacking_outcome(self, runs: Iterable[dict], limit: int = 20) -> list[str]:
        """Keys of sent runs whose outcome is not known yet (what to ask the service)."""
        return [run["key"] for run in runs
                if run.get("outcome") is None and run.get("state") == "sent"
                and ASKABLE_KEY.fullmatch(run["key"])][:limit]

    def learn(self, answers) -> None:
        """Remember outcomes from the service's ``runs`` answer."""
        for answer in answers if isinstance(answers, list) else ():
            outcome = outcome_of(answer)
            if outcome is not None and isinstance(answer.get("key"), str):
                self._remember(answer["key"], outcome)

    def _remember(self, key: str, outcome: dict) -> None:
        self.outcomes[key] = outcome
        while len(self.outcomes) > self.MAX_OUTCOMES:
            self.outcomes.pop(next(iter(self.outcomes)))
