"""Earning end to end: real TensorFlow runs model.fit with CreditsCallback in a real
single-user server's environment (its own token and service address), spawned by a real hub."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from jupyterhub_credits.earning.store import EarningService
from tests.waiting import wait_for

#: Training runs count from 3 s here (300 s by default), so a test can run a real one.
MIN_RUN_S = 3

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.hub(catalog={"earning": {
    "rules": {"training_run": {"min_duration_s": MIN_RUN_S, "min_interval_s": 0}},
    "session_grace_s": 0,  # a stopped session stops counting at once
}})]

TRAIN = textwrap.dedent("""
    import sys, time
    import numpy as np
    import keras
    from jupyterhub_credits.keras import CreditsCallback

    epochs, pause = int(sys.argv[1]), float(sys.argv[2])
    x = np.random.rand(64, 4).astype("float32")
    y = (x.sum(axis=1) > 2).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    # A stand-in for real work per epoch, so the run lasts as long as the test needs.
    slow = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(pause))
    credits = CreditsCallback()
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[slow, credits])
    from jupyterhub_credits.singleuser.reporter import get_reporter
    assert get_reporter().flush(30), "the run was not delivered"
    print(credits.key, flush=True)
""")


def train(env, epochs, pause):
    return subprocess.run([sys.executable, "-c", TRAIN, str(epochs), str(pause)], env=env,
                          capture_output=True, text=True, timeout=180)


def runs(ledger, user):
    return [e for e in EarningService(ledger).history(user) if e["kind"] == "training_run"]


def test_a_training_run_in_a_real_server_earns_once(hub, hub_ledger):
    hub.grant("tina", 10)
    hub.running_server("tina", image="tf-2.21-cpu", gpu_type="none", gpus=0, hours="1")
    # The single-user server's own environment: its token, its service address.
    env = {**hub.server_environment("tina"), "PATH": os.environ["PATH"]}
    assert env["JUPYTERHUB_CREDITS_API_URL"].endswith("/services/credits/api")

    before = hub_ledger.balance("tina").total
    long_run = train(env, epochs=8, pause=(MIN_RUN_S + 1) / 8)
    assert long_run.returncode == 0, long_run.stderr[-3000:]
    earned = wait_for(lambda: [r for r in runs(hub_ledger, "tina")
                               if r["outcome"] == "earned"], what="the run to be recorded")
    assert len(earned) == 1 and earned[0]["payload"]["epochs"] == 8
    assert hub_ledger.balance("tina").total == before + earned[0]["units"] > before

    # Too short: recorded, earns nothing.
    short_run = train(env, epochs=1, pause=0)
    assert short_run.returncode == 0, short_run.stderr[-3000:]
    rejected = wait_for(lambda: [r for r in runs(hub_ledger, "tina")
                                 if r["outcome"] != "earned"], what="the short run")
    assert len(rejected) == 1 and rejected[0]["units"] == 0

    # The same run reported again (a retry) earns nothing twice.
    again = hub.credits_api("POST", "/events", token=env["JUPYTERHUB_API_TOKEN"], json=[{
        "kind": "training_run", "key": earned[0]["key"], "time": earned[0]["time"],
        "payload": earned[0]["payload"]}])
    assert again.status_code == 200, again.text
    assert again.json()[0]["outcome"] == "duplicate"
    assert hub_ledger.balance("tina").total == before + earned[0]["units"]

    # With no session running, a claim earns nothing.
    user_token = hub.user_token("tina")
    hub.stop_server("tina")
    late = hub.credits_api("POST", "/events", token=user_token, json=[{
        "kind": "training_run", "key": "after-the-session", "time": earned[0]["time"],
        "payload": earned[0]["payload"]}])
    assert late.status_code == 200 and late.json()[0]["outcome"] == "rejected"
