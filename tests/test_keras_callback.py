"""CreditsCallback with real TensorFlow (CPU) and Keras 3, against a fake credits service."""

from __future__ import annotations

import json
import logging
import os
import warnings
from datetime import datetime

import pytest

from jupyterhub_credits.singleuser import reporter as reporter_module
from jupyterhub_credits.singleuser import runs
from jupyterhub_credits.singleuser.reporter import EventReporter
from tests.fake_credits import TOKEN, FakeCreditsService

pytestmark = pytest.mark.slow

keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")
pytest.importorskip("tensorflow")

from jupyterhub_credits import keras as credits_keras  # noqa: E402
from jupyterhub_credits.keras import CreditsCallback  # noqa: E402

SAMPLES, BATCH, EPOCHS = 64, 16, 3  # 4 steps per epoch


@pytest.fixture
def service():
    with FakeCreditsService() as fake:
        yield fake


@pytest.fixture
def hub_env(service, tmp_path, monkeypatch):
    """The environment a kernel of a single-user server has."""
    for name in list(os.environ):
        if name.startswith("JUPYTERHUB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://127.0.0.1:9/hub/api")  # overridden below
    monkeypatch.setenv("JUPYTERHUB_CREDITS_API_URL", service.api_url)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTERHUB_CREDITS_SESSION", "session-9")
    reporter_module._reset_shared_reporter()
    yield
    reporter_module._reset_shared_reporter()


def fit(callback, *, tensorboard_dir=None, epochs=EPOCHS, steps_per_execution=1):
    keras.utils.set_random_seed(1)
    x = np.random.rand(SAMPLES, 4).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 2).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    callbacks = [callback]
    if tensorboard_dir is not None:
        callbacks.insert(0, keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir)))
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, validation_split=0.25,
                     callbacks=callbacks, verbose=0)


def test_a_run_is_reported_once_with_its_details(service, hub_env, tmp_path):
    callback = CreditsCallback()
    history = fit(callback, tensorboard_dir=tmp_path / "tb")
    shared = reporter_module.get_reporter()
    assert shared is not None and shared.flush(timeout=20)

    assert list(service.earned) == [callback.key]
    event = service.earned[callback.key]
    assert event["kind"] == "training_run" and callback.key.startswith("training_run:")
    payload = event["payload"]
    assert set(payload) == {"epochs", "steps", "duration_s", "metrics", "logdir"}
    steps = EPOCHS * (SAMPLES * 3 // 4 // BATCH)  # a quarter held out for validation
    assert payload["epochs"] == EPOCHS and payload["steps"] == steps
    assert payload["duration_s"] > 0
    assert payload["logdir"] == str(tmp_path / "tb")
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert payload["metrics"][name] == pytest.approx(history.history[name][-1], rel=1e-6)
    assert callback.summary["steps_per_s"] > 0 and callback.summary["started"] <= event["time"]
    posts = service.event_posts()
    assert len(posts) == 1 and posts[0]["authorization"] == f"token {TOKEN}"

    # the same callback in a second fit (several steps per execution): a new run, a new key
    first_key = callback.key
    fit(callback, epochs=2, steps_per_execution=3)
    assert shared.flush(timeout=20)
    assert callback.key != first_key and len(service.earned) == 2
    second = service.earned[callback.key]["payload"]
    assert second["epochs"] == 2 and second["steps"] == 2 * (SAMPLES * 3 // 4 // BATCH)
    assert second["logdir"] is None

    # each run is a line of the runs journal, for the JupyterLab panel
    lines = [json.loads(line) for line in
             runs.journal_path(tmp_path / "runtime").read_text().splitlines()]
    assert [line["key"] for line in lines] == [first_key, callback.key]
    assert lines[0] == dict(payload, server="session-9", key=first_key,
                            started_at=lines[0]["started_at"], ended_at=lines[0]["ended_at"])
    started, ended = (datetime.fromisoformat(lines[0][f].replace("Z", "+00:00"))
                      for f in ("started_at", "ended_at"))
    assert started <= ended and started.tzinfo is not None
    assert runs.read_runs(runs.journal_path(tmp_path / "runtime"), "session-9")[0]["key"] == \
        callback.key


def test_a_failed_post_is_retried_with_the_same_key(service, hub_env, tmp_path):
    service.fail_next(503, "drop", "drop-after")
    reporter = EventReporter(service.api_url, TOKEN, state_path=tmp_path / "state.json",
                             backoff_base=0.01, backoff_max=0.05)
    callback = CreditsCallback(logdir=tmp_path / "mine", reporter=reporter)
    fit(callback)
    assert reporter.flush(timeout=20)
    posts = service.event_posts()
    assert len(posts) == 4
    assert all([e["key"] for e in post["events"]] == [callback.key] for post in posts)
    assert list(service.earned) == [callback.key]  # counted once
    assert reporter.outcome(callback.key)["outcome"] == "duplicate"  # the resend after drop-after
    assert service.earned[callback.key]["payload"]["logdir"] == str(tmp_path / "mine")
    reporter.close()


def test_a_journal_that_cannot_be_written_never_stops_training(service, hub_env, tmp_path,
                                                               monkeypatch, caplog):
    (tmp_path / "runtime").write_text("a file where the runtime directory should be")
    monkeypatch.setattr(credits_keras, "_journal_warned", False)
    reporter = EventReporter(service.api_url, TOKEN, state_path=None)
    first, second = CreditsCallback(reporter=reporter), CreditsCallback(reporter=reporter)
    with caplog.at_level(logging.WARNING, logger="jupyterhub_credits.keras"):
        fit(first, epochs=1)
        fit(second, epochs=1)
    assert reporter.flush(timeout=20)
    assert set(service.earned) == {first.key, second.key}  # the events went all the same
    ours = [r for r in caplog.records if "runs journal" in r.getMessage()]
    assert len(ours) == 1  # once, not per run
    reporter.close()


def test_outside_jupyterhub_nothing_is_sent_and_it_warns_once(service, monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("JUPYTERHUB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    reporter_module._reset_shared_reporter()
    monkeypatch.setattr(credits_keras, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = CreditsCallback(), CreditsCallback()
        fit(first, epochs=1)
        fit(second, epochs=1)
    ours = [w for w in caught if "CreditsCallback" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert first.key is None and second.key is None
    assert first.summary["epochs"] == 1  # still recorded for the user
    assert reporter_module.get_reporter() is None and service.requests == []
    assert not runs.journal_path().exists()  # no run was reported: none to list
