"""Building one image's environment: a new build directory, then one switch of its link.

A virtualenv cannot be moved once built (pip writes its Python's absolute path into
every script it installs), so a build is made where it will stay,
``<envs dir>/.builds/<image id>/<time>``, and ``<envs dir>/<image id>`` — a symbolic
link — is switched to it only when it is complete (an atomic rename). A build
that fails is removed and the link still points to the previous build: a
half-built environment is never the one servers run. The previous build is kept
for servers that still run on it; older ones are removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from .layout import BUILDS, SERVER_PROGRAM, STAMP, is_runnable
from .pins import Requirements

#: Lines of pip's output shown when it fails.
TAIL_LINES = 20
#: The requirements file written into each build (kept: it says what was installed).
REQUIREMENTS_FILE = "jupyterhub-credits-requirements.txt"
LOCAL_GPUS_ENV = "JUPYTERHUB_CREDITS_LOCAL_GPUS"  # as sessions.inventory.ENV_VAR


class BuildError(Exception):
    """A build that did not complete; ``output`` is the end of the failed command's output."""

    def __init__(self, message: str, output: Sequence[str] = ()):
        super().__init__(message)
        self.output = list(output)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def nvml_device_count() -> int:
    """GPUs NVML sees (0 without nvidia-ml-py or a driver)."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: no GPUs
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def machine_has_gpus() -> bool:
    """Declared GPUs ($JUPYTERHUB_CREDITS_LOCAL_GPUS, even empty, has the last word, as for
    the spawner), else whether NVML finds at least one device."""
    declared = os.environ.get(LOCAL_GPUS_ENV)
    if declared is not None:
        return bool(declared.strip())
    return nvml_device_count() > 0


def build_environment(image_id: str, requirements: Requirements, envs_dir: str | Path, *,
                      package: str, python: str = sys.executable,
                      pip_options: Sequence[str] = (), clock: Callable[[], datetime] = utcnow,
                      echo: Callable[[str], None] = lambda line: None,
                      show_pip: bool = False) -> Path:
    """Build ``image_id``'s environment in ``envs_dir`` and switch its link to it.

    ``package``: what pip installs as jupyterhub-credits (``--no-deps``, after the
    pins). ``pip_options`` go to every pip call (tests: ``--no-index --find-links``;
    pip also reads its usual PIP_* variables and pip.conf). ``echo`` gets progress
    lines, and pip's own output too when ``show_pip``. Returns the new build.
    """
    envs_dir = Path(envs_dir)
    image_builds = envs_dir / BUILDS / image_id
    image_builds.mkdir(parents=True, exist_ok=True)
    with _exclusive(image_builds / ".lock", image_id):
        build = image_builds / clock().strftime("%Y%m%dT%H%M%S.%fZ")
        try:
            _make(build, requirements, package=package, python=python,
                  pip_options=pip_options, echo=echo, show_pip=show_pip)
            _write_stamp(build, image_id, requirements, package, python, clock)
            previous = _switch_link(envs_dir / image_id, build, clock)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        _remove_old_builds(image_builds, keep={build, previous})
        return build


def _make(build: Path, requirements: Requirements, *, package: str, python: str,
          pip_options: Sequence[str], echo, show_pip: bool) -> None:
    echo(f"creating a virtualenv with {python}")
    _run([python, "-m", "venv", str(build)], "python -m venv", echo, show_pip)
    pins = build / REQUIREMENTS_FILE
    pins.write_text(requirements.text, encoding="utf-8")
    pip = [str(build / "bin" / "python"), "-m", "pip", "install", "--no-input",
           "--disable-pip-version-check", *pip_options]
    echo(f"installing the pinned requirements with {requirements.tensorflow} "
         "(this can take minutes)")
    _run([*pip, "-r", str(pins)], "pip install of the pinned requirements", echo, show_pip)
    echo(f"installing {package} (--no-deps)")
    _run([*pip, "--no-deps", package], f"pip install of {package}", echo, show_pip)
    if not is_runnable(build):
        raise BuildError(f"the environment has no {SERVER_PROGRAM} after installing its "
                         "requirements: the pinned file must include jupyterhub")


def _run(command: list[str], what: str, echo, show_pip: bool) -> None:
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)  # the new environment must see its own packages only
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", env=env)
    except OSError as error:
        raise BuildError(f"{what}: cannot run {command[0]}: {error.strerror or error}") from None
    with process:
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if show_pip:
                echo(line)
    if process.returncode != 0:
        raise BuildError(f"{what} failed (exit status {process.returncode})", tail)


def _write_stamp(build: Path, image_id: str, requirements: Requirements, package: str,
                 python: str, clock) -> None:
    stamp = {"image": image_id, "tensorflow": requirements.tensorflow,
             "requirements_sha256": requirements.sha256, "package": package,
             "python": python, "built_at": clock().isoformat()}
    (build / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")


def _switch_link(link: Path, build: Path, clock) -> Path | None:
    """Point ``link`` at ``build`` in one rename; returns the build it pointed to before.

    An environment that is a real directory (made by hand) is moved aside into the
    image's builds first, and kept like a previous build.
    """
    previous = None
    if link.is_symlink():
        previous = (link.parent / os.readlink(link)).resolve()
    elif link.is_dir():
        previous = build.parent / f"replaced-{clock().strftime('%Y%m%dT%H%M%S.%fZ')}"
        link.rename(previous)
    elif link.exists():
        raise BuildError(f"{link} is a file, not an environment: move it away first")
    staged = link.with_name(f".{link.name}.switching-{os.getpid()}")
    staged.unlink(missing_ok=True)
    staged.symlink_to(os.path.relpath(build, link.parent))
    os.replace(staged, link)
    return previous


def _remove_old_builds(image_builds: Path, keep: set) -> None:
    keep = {path.resolve() for path in keep if path is not None}
    for entry in image_builds.iterdir():
        if entry.name != ".lock" and entry.resolve() not in keep:
            shutil.rmtree(entry, ignore_errors=True)


class _exclusive:
    """An exclusive lock on a file: one build of an image at a time."""

    def __init__(self, path: Path, image_id: str):
        self.path, self.image_id = path, image_id

    def __enter__(self):
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise BuildError(f"another build of {self.image_id} is running") from None
        return self

    def __exit__(self, *exc):
        self.file.close()
