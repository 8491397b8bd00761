"""Where each catalog image's environment lives on this machine, and what state it is in.

Nomenclature (one meaning each, in code, messages and the README):

- **environment**: a virtualenv that runs one catalog image's notebook servers on
  this machine; the local spawner runs its ``bin/jupyterhub-singleuser``.
- **envs dir**: the directory that holds one environment per image, at
  ``<envs dir>/<image id>``.
- **build**: one real directory under ``<envs dir>/.builds/`` made by
  ``jupyterhub-credits envs build``; ``<envs dir>/<image id>`` is a symbolic link to
  the current build, switched only once a build is complete.
- **stamp**: ``jupyterhub-credits-env.json`` in a build: what it was built from.
- **state**: ``built`` (runs, and matches the image's pins), ``stale`` (runs, but was
  built from other pins, another TensorFlow build, or not by ``envs build``),
  ``broken`` (there, but has no runnable ``jupyterhub-singleuser``), ``missing``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

#: The one default of the spawner's ``envs_dir`` and of ``jupyterhub-credits envs``.
ENVS_DIR_ENV = "JUPYTERHUB_CREDITS_ENVS_DIR"
DEFAULT_ENVS_DIR = "/opt/jupyterhub-credits/envs"

SERVER_PROGRAM = Path("bin") / "jupyterhub-singleuser"
STAMP = "jupyterhub-credits-env.json"
BUILDS = ".builds"
#: The key of ``image_environments`` that stands for every image not listed by id.
EVERY_IMAGE = "*"

BUILT, STALE, BROKEN, MISSING = "built", "stale", "broken", "missing"

#: The names TensorFlow is installed under (canonical distribution names).
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel")


def default_envs_dir() -> str:
    """$JUPYTERHUB_CREDITS_ENVS_DIR, else /opt/jupyterhub-credits/envs."""
    return os.environ.get(ENVS_DIR_ENV) or DEFAULT_ENVS_DIR


def environment_path(image_id: str, envs_dir: str | Path,
                     overrides: dict[str, str] | None = None) -> Path:
    """An image's environment: its own entry in ``overrides``, else the ``"*"`` entry,
    else ``<envs_dir>/<image id>``."""
    overrides = overrides or {}
    chosen = overrides.get(image_id) or overrides.get(EVERY_IMAGE)
    return Path(chosen) if chosen else Path(envs_dir) / image_id


def server_program(environment: Path) -> Path:
    return Path(environment) / SERVER_PROGRAM


def is_runnable(environment: Path) -> bool:
    """Whether the environment has a ``jupyterhub-singleuser`` the spawner can run."""
    program = server_program(environment)
    return program.is_file() and os.access(program, os.X_OK)


def same_environment(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def read_stamp(environment: Path) -> dict | None:
    """The stamp of the environment's build; None when there is none or it is unreadable."""
    try:
        stamp = json.loads((Path(environment) / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def canonical_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Tensorflow_CPU`` → ``tensorflow-cpu``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(environment: Path, names=TENSORFLOW_DISTRIBUTIONS) -> str | None:
    """The version of the first of ``names`` installed in the environment, read from its
    ``*.dist-info`` directories (without running the environment's Python)."""
    wanted = {canonical_name(name) for name in names}
    for site_packages in sorted(Path(environment).glob("lib/python*/site-packages")):
        for dist_info in sorted(site_packages.glob("*.dist-info")):
            name, _, version = dist_info.name[: -len(".dist-info")].partition("-")
            if version and canonical_name(name) in wanted:
                return version
    return None


@dataclass(frozen=True)
class Expected:
    """What ``envs build`` would install now: the TensorFlow requirement and the pins' hash."""

    tensorflow: str  # e.g. "tensorflow[and-cuda]==2.21.0"
    requirements_sha256: str


@dataclass(frozen=True)
class EnvironmentState:
    image: str
    state: str
    path: str
    tensorflow: str | None = None  # the installed version, e.g. "2.21.0"
    built_with: str | None = None  # the stamp's TensorFlow requirement
    built_at: str | None = None
    expected: str | None = None  # the TensorFlow requirement a build would install now
    problem: str | None = None  # why it is not "built", in words

    def to_dict(self) -> dict:
        return asdict(self)


def environment_state(image_id: str, environment: Path,
                      expected: Expected | None = None) -> EnvironmentState:
    """The state of one image's environment (see the module docstring).

    ``expected`` None (no pinned requirements to compare with): a runnable
    environment with a stamp counts as built.
    """
    environment = Path(environment)
    common = {"image": image_id, "path": str(environment),
              "expected": expected.tensorflow if expected else None}
    if not environment.exists():
        problem = None
        if environment.is_symlink():
            problem = f"it links to {os.readlink(environment)}, which does not exist"
            return EnvironmentState(state=BROKEN, problem=problem, **common)
        return EnvironmentState(state=MISSING, **common)
    found = {"tensorflow": installed_version(environment)}
    stamp = read_stamp(environment)
    if stamp:
        found.update(built_with=stamp.get("tensorflow"), built_at=stamp.get("built_at"))
    if not is_runnable(environment):
        return EnvironmentState(state=BROKEN, problem=f"no runnable {SERVER_PROGRAM}",
                                **common, **found)
    if stamp is None:
        return EnvironmentState(state=STALE, problem="not made by jupyterhub-credits envs build "
                                "(no stamp): what it holds is unknown", **common, **found)
    if expected is not None:
        if stamp.get("tensorflow") != expected.tensorflow:
            return EnvironmentState(
                state=STALE, problem=f"built with {stamp.get('tensorflow')}, "
                f"a build now installs {expected.tensorflow}", **common, **found)
        if stamp.get("requirements_sha256") != expected.requirements_sha256:
            return EnvironmentState(state=STALE, problem="the image's pinned requirements "
                                    "changed since it was built", **common, **found)
    return EnvironmentState(state=BUILT, **common, **found)


#: How the spawn form marks an image whose environment is not there.
NOT_INSTALLED = "not installed on this machine"


def build_command(image_id: str, envs_dir: str | Path) -> str:
    """The command that builds ``image_id``'s environment where the spawner looks for it."""
    command = f"jupyterhub-credits envs build {image_id}"
    if not same_environment(envs_dir, default_envs_dir()):
        command += f" --envs-dir {envs_dir}"
    return command


def not_installed_message(display_name: str, image_id: str, environment: Path,
                          envs_dir: str | Path) -> str:
    """Why a server of this image cannot start here, and what fixes it."""
    if same_environment(environment, Path(envs_dir) / image_id):
        fix = f"An administrator can build it with: {build_command(image_id, envs_dir)}"
    else:  # an environment of the administrator's own choosing (image_environments)
        fix = (f"An administrator must install jupyterhub-singleuser into {environment} "
               "(set in image_environments)")
    return f"{display_name} is {NOT_INSTALLED}. {fix}. Nothing was charged."
