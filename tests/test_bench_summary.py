"""bench/run_all's summary reads each figure where its script writes it.

Each script's last full run is kept in bench/results/<script>.json: every
figure bench/summary.py names must be found there as a number (or true/false), so a script
that renames or moves a figure breaks this test rather than leaving a blank
in the README's table. The runner itself is checked on a script that fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from numbers import Number
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run_all  # noqa: E402
from summary import FIGURES, WORDS  # noqa: E402


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_summary_figure_is_a_number_in_the_saved_result(name):
    script, path = FIGURES[name]
    saved = ROOT / "bench" / "results" / f"{script}.json"
    assert saved.exists(), f"bench/results/{script}.json is missing"
    value = run_all.dig(json.loads(saved.read_text()), *path)
    assert isinstance(value, Number), f"{name}: {script}.json has {value!r} at {path}"
    assert name in WORDS  # the README's table says what it is


def test_every_summary_script_is_one_run_all_runs():
    names = {script.name for script in run_all.SCRIPTS}
    assert {script for script, _ in FIGURES.values()} <= names
    for script in run_all.SCRIPTS:
        assert (ROOT / "bench" / f"{script.name}.py").exists(), script.name


def test_a_failing_script_is_reported_not_fatal(tmp_path, monkeypatch):
    (tmp_path / "broken.py").write_text("import sys\nprint('half a result', file=sys.stderr)\n"
                                        "sys.exit(3)\n")
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    entry = run_all.run_script(run_all.Script("broken", writes_out=False), False,
                               sys.executable)
    assert entry["error"] == "exit status 3, no JSON document"
    assert "half a result" in entry["stderr_tail"]


def test_the_table_is_printed_from_a_saved_document(tmp_path):
    saved = tmp_path / "run_all.json"
    saved.write_text(json.dumps({
        "quick": True, "finished": "2026-11-28T00:00:00+00:00",
        "machine": {"cpus": 2, "cpu_model": "AMD EPYC", "memory_gib": 23.5, "python": "3.11.7"},
        "summary": {"expiry.decision_p99_s": 0.08}}))
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--table",
                            str(saved)], capture_output=True, text=True, check=True).stdout
    assert f"| {WORDS['expiry.decision_p99_s']} | 0.08 |" in table
    assert f"| {WORDS['expiry.decision_p50_s']} | — |" in table
    assert "on 2 cores (AMD EPYC)" in table and "quick run" in table
