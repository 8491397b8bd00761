#!/usr/bin/env python
"""Every benchmark, one after the other, as ONE JSON document on stdout.

    bench/run_all [--quick] [--only NAME,...] [--skip NAME,...] [--out PATH]
    bench/run_all --table PATH      # the README's table from a saved document
    bench/run_all --from-results    # the document from bench/results/*.json, running nothing

Each script in ``SCRIPTS`` runs in its own process (so one failing or
hanging cannot take the others with it: each has a time limit); its JSON
document goes under ``results.<name>`` whole, and the figures that matter
under ``summary``. Scripts needing a GPU run only where ``nvidia-smi`` lists
one. ``--quick`` passes each script its own quick option: a few minutes in
all instead of about an hour. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


@dataclass(frozen=True)
class Script:
    name: str
    full: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)
    limit_s: int = 1800  # full run; quick runs get a fifth
    writes_out: bool = True  # takes --out PATH (else its stdout is the document)
    gpu: bool = False


SCRIPTS = [
    Script("ledger", quick=["--quick"], writes_out=False),
    Script("meter", quick=["--quick"]),
    Script("hub_scale", quick=["--quick"]),
    Script("events", quick=["--quick"], writes_out=False),
    Script("spawn", quick=["--spawns", "10"], writes_out=False),
    Script("pages", quick=["--users", "10000", "--transfers", "100000", "--runs", "10",
                           "--heavy", "1000", "--no-plans"]),
    Script("lab_poll", quick=["--quick"]),
    Script("load", quick=["--quick"]),
    Script("faults", quick=["--quick"]),
    Script("peer", quick=["--quick"]),
    Script("gpu_check", writes_out=False, gpu=True),
    Script("gpu_sampler", writes_out=False, gpu=True),
]


def log(message: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    found = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return found.returncode == 0 and "GPU" in found.stdout


def machine() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "system": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (OSError, ValueError):
        pass
    info["gpu"] = has_gpu()
    return info


def run_script(script: Script, quick: bool, python: str) -> dict:
    """Its JSON document, or what went wrong (exit status, the end of its stderr)."""
    limit = script.limit_s // 5 if quick else script.limit_s
    args = [python, str(BENCH / f"{script.name}.py"), *(script.quick if quick else script.full)]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        if script.writes_out:
            args += ["--out", str(out)]
        started = time.monotonic()
        try:
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                                  check=False)
        except subprocess.TimeoutExpired as expired:
            return {"error": f"no result within {limit} s",
                    "stderr_tail": _tail(expired.stderr)}
        seconds = round(time.monotonic() - started, 1)
        text = out.read_text() if script.writes_out and out.exists() else done.stdout
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            return {"error": f"exit status {done.returncode}, no JSON document",
                    "seconds": seconds, "stderr_tail": _tail(done.stderr)}
        if done.returncode != 0:
            document = {"exit_status": done.returncode, **document}
        return {"seconds": seconds, "document": document}


def _tail(text, lines: int = 15) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


# --- the figures that matter (each issue names them) ---------------------------------------


def dig(document, *path, default=None):
    """``document[path[0]][path[1]]…``, or ``default`` where any step is missing."""
    for step in path:
        if isinstance(document, dict) and step in document:
            document = document[step]
        elif isinstance(document, list) and isinstance(step, int) and -len(document) <= step \
                < len(document):
            document = document[step]
        else:
            return default
    return document


def summarise(results: dict) -> dict:
    """One flat ``figure → value`` table from every script's document; missing ones null."""
    from summary import FIGURES  # bench/summary.py: which figure lives where

    table = {}
    for name, (script, path) in FIGURES.items():
        entry = results.get(script) or {}
        table[name] = dig(entry.get("document"), *path)
    return table


def markdown_table(report: dict) -> str:
    from summary import FIGURES, describe

    rows = ["| Figure | Value |", "|---|---|"]
    for name in FIGURES:
        value = report.get("summary", {}).get(name)
        rows.append(f"| {describe(name)} | {'—' if value is None else value} |")
    where = report.get("machine", {})
    rows.append("")
    machine_words = (f"{where.get('cpus')} cores ({where.get('cpu_model', where.get('machine'))}), "
                     f"{where.get('memory_gib')} GiB, Python {where.get('python')}")
    if report.get("gathered_from"):
        rows.append(f"Each script's last saved run (`bench/results/`: each document gives "
                    f"its options and the machine's load), gathered "
                    f"{report.get('finished', '?')[:10]}, on {machine_words}.")
    else:
        rows.append(f"Measured {report.get('finished', '?')} on {machine_words}, "
                    f"{'quick' if report.get('quick') else 'full'} run.")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each script's quick run")
    parser.add_argument("--only", help="comma-separated script names")
    parser.add_argument("--skip", default="", help="comma-separated script names")
    parser.add_argument("--out", help="also write the document to this file")
    parser.add_argument("--table", metavar="PATH",
                        help="print the Markdown table of a saved document and stop")
    parser.add_argument("--from-results", action="store_true",
                        help="run nothing: gather the last full run of each script saved in "
                             "bench/results/<script>.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCH))
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return 0
    names = {s.name for s in SCRIPTS}
    wanted = set(args.only.split(",")) if args.only else names
    skipped = set(filter(None, args.skip.split(",")))
    unknown = (wanted | skipped) - names
    if unknown:
        parser.error(f"no such benchmark: {', '.join(sorted(unknown))} "
                     f"(there are: {', '.join(s.name for s in SCRIPTS)})")
    python = sys.executable
    report = {"benchmark": "run_all", "quick": args.quick, "machine": machine(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "results": {}}
    if args.from_results:
        report["started"] = None
        report["gathered_from"] = "bench/results/<script>.json: each script's last saved run"
    for script in SCRIPTS:
        if script.name not in wanted or script.name in skipped:
            continue
        if args.from_results:
            saved = BENCH / "results" / f"{script.name}.json"
            report["results"][script.name] = (
                {"document": json.loads(saved.read_text()),
                 "saved_at": datetime.fromtimestamp(saved.stat().st_mtime, timezone.utc)
                 .isoformat(timespec="seconds")}
                if saved.exists() else {"skipped": "no saved result"})
            continue
        if script.gpu and not report["machine"]["gpu"]:
            report["results"][script.name] = {"skipped": "no GPU on this machine"}
            continue
        log(f"{script.name} …")
        report["results"][script.name] = entry = run_script(script, args.quick, python)
        outcome = entry.get("error") or f"{entry.get('seconds')} s"
        log(f"{script.name}: {outcome}")
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["load_average_after"] = os.getloadavg()
    report["summary"] = summarise(report["results"])
    report["ok"] = all("error" not in entry and not dig(entry, "document", "exit_status")
                       and dig(entry, "document", "ok") is not False
                       for entry in report["results"].values())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
