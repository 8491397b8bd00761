"""``CreditsCallback``: report a Keras training run to the credits service.

    from jupyterhub_credits.keras import CreditsCallback
    model.fit(x, y, epochs=5, callbacks=[CreditsCallback(), keras.callbacks.TensorBoard("logs")])

It records when the run started, the epochs and steps completed, steps per second,
the final loss and metrics and the TensorBoard log directory (of a ``TensorBoard``
callback in the same ``fit``, or ``logdir=`` given here), and at the end of
training sends one ``training_run`` event ``{"epochs", "steps", "duration_s",
"metrics", "logdir"}`` with a fresh idempotency key per run through the process's
:func:`~jupyterhub_credits.singleuser.reporter.get_reporter` (batched, retried with
the same key, kept on disk if it cannot be sent yet). Sending never blocks training.
It also appends the run to this server's runs journal (:mod:`.singleuser.runs`), which
the JupyterLab credits panel lists; a journal that cannot be written costs a warning
in the log, never the training. Outside JupyterHub (no ``JUPYTERHUB_API_TOKEN``) it
does nothing and warns once.

Importing ``jupyterhub_credits`` does not import TensorFlow or Keras; importing this
module imports Keras (``keras`` 3, or ``tf_keras`` when ``TF_USE_LEGACY_KERAS=1``,
or ``tensorflow.keras`` on old TensorFlow).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
import uuid
import warnings
from datetime import datetime, timezone

from .singleuser import runs as runs_journal
from .singleuser.reporter import get_reporter

log = logging.getLogger(__name__)

EVENT_KIND = "training_run"
_warned = False
_journal_warned = False


def _callback_base():
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes"):
        try:
            import tf_keras
            return tf_keras.callbacks.Callback
        except ImportError:
            pass
    try:
        import keras
        return keras.callbacks.Callback
    except ImportError:  # TensorFlow < 2.16 without a separate keras package
        from tensorflow import keras
        return keras.callbacks.Callback


def _number(value):
    """A metric value as a plain float (numpy scalars, 0-d tensors); None if not one."""
    try:
        number = float(value.numpy() if hasattr(value, "numpy") else value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _journal(record: dict) -> None:
    """Append the run to the runs journal; a failure is logged once, never raised."""
    global _journal_warned
    try:
        runs_journal.append_run(record)
    except Exception as error:  # noqa: BLE001 - a full disk or odd metrics must not stop fit
        if not _journal_warned:
            _journal_warned = True
            log.warning("CreditsCallback: could not add the run to the runs journal (%s: %s); "
                        "the credits panel will not list it", type(error).__name__, error)


def _find_logdir(callback) -> str | None:
    """The log dir of a TensorBoard callback in the same fit, found on the CallbackList.

    Keras calls ``on_train_begin`` from ``CallbackList.on_train_begin``; that list is
    the caller's ``self`` (Keras 2 and 3), a few frames up at most.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(8):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            members = getattr(owner, "callbacks", None)
            if isinstance(members, list) and any(m is callback for m in members):
                for member in members:
                    is_tensorboard = any(k.__name__ == "TensorBoard" for k in type(member).__mro__)
                    if is_tensorboard and getattr(member, "log_dir", None):
                        return os.path.abspath(os.fspath(member.log_dir))
                return None
    finally:
        del frame
    return None


class CreditsCallback(_callback_base()):
    """Reports each ``fit`` it takes part in as one ``training_run`` event.

    ``logdir``: the TensorBoard log directory to report when no TensorBoard
    callback is in the same fit. ``reporter``: an EventReporter to use instead of
    the process's own (tests). After training, ``summary`` holds what was recorded
    (with ``started`` and ``steps_per_s``) and ``key`` the event's key (None when
    nothing was sent).
    """

    def __init__(self, logdir: str | None = None, *, reporter=None):
        super().__init__()
        self._logdir = logdir
        self._reporter = reporter
        self.summary: dict | None = None
        self.key: str | None = None
        self._begin_run()

    def _begin_run(self) -> None:
        self._start = None
        self._started = None
        self._epochs = 0
        self._steps = 0
        self._epoch_last_batch = -1
        self._metrics: dict = {}
        self._run_logdir = None

    def _reporter_or_warn(self):
        global _warned
        reporter = self._reporter or get_reporter()
        if reporter is None and not _warned:
            _warned = True
            warnings.warn("CreditsCallback: not running under JupyterHub (no JUPYTERHUB_API_TOKEN "
                          "or credits service URL); training runs are not reported",
                          RuntimeWarning, stacklevel=3)
        return reporter

    # -- Keras hooks --------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._begin_run()
        self.summary, self.key = None, None
        self._start = time.monotonic()
        self._started = datetime.now(timezone.utc)
        self._run_logdir = self._logdir and os.path.abspath(os.fspath(self._logdir))
        if self._run_logdir is None:
            self._run_logdir = _find_logdir(self)
        self._reporter_or_warn()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_last_batch = -1

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1 Keras calls this once per execution, with the
        # index of its last step: count the steps from the highest index seen.
        self._epoch_last_batch = max(self._epoch_last_batch, int(batch))

    def on_epoch_end(self, epoch, logs=None):
        self._epochs += 1
        self._steps += self._epoch_last_batch + 1
        self._epoch_last_batch = -1
        self._take_metrics(logs)

    def on_train_end(self, logs=None):
        if self._start is None:
            return
        self._steps += self._epoch_last_batch + 1  # an epoch cut short (early stop, interrupt)
        self._epoch_last_batch = -1
        self._take_metrics(logs)
        duration = time.monotonic() - self._start
        payload = {"epochs": self._epochs, "steps": self._steps,
                   "duration_s": round(duration, 3), "metrics": dict(self._metrics),
                   "logdir": self._run_logdir}
        self.summary = dict(payload, started=self._started.isoformat(timespec="seconds"),
                            steps_per_s=round(self._steps / duration, 3) if duration > 0 else None)
        self._start = None
        reporter = self._reporter_or_warn()
        if reporter is None:
            return
        self.key = reporter.send(EVENT_KIND, payload, key=f"{EVENT_KIND}:{uuid.uuid4().hex}")
        _journal(dict(payload, server=runs_journal.server_id(), key=self.key,
                      started_at=_iso(self._started), ended_at=_iso(datetime.now(timezone.utc))))

    def _take_metrics(self, logs) -> None:
        for name, value in (logs or {}).items():
            number = _number(value)
            if number is not None:
                self._metrics[str(name)] = number
