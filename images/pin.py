#!/usr/bin/env python3
"""Write the fully pinned requirements of each notebook image (re-pinning).

    python images/pin.py                # every notebook image of images/docker-bake.json
    python images/pin.py tf-2.21        # only these image ids

For each notebook target of images/docker-bake.json this resolves, against PyPI and for the
image's own platform (manylinux x86_64 for the glibc of its Ubuntu base) and Python version
(PYTHON_VERSION), the top-level requirements:

- tensorflow==TENSORFLOW_VERSION (tensorflow-cpu==... when CUDA_VERSION is empty),
- images/requirements.in,
- what jupyterhub-credits[singleuser] requires (setup.cfg: install_requires and the extra),

with ``pip install --dry-run --ignore-installed --report`` (wheels only: an image never compiles),
and writes every distribution the report installs as ``name==version`` to the image's
REQUIREMENTS file (jupyterhub_credits/images/requirements/<image id>.txt).

pip evaluates environment markers (``; python_version < "3.11"``) for the interpreter that runs
it, not for ``--python-version``: run as is, a Python 3.11 pip would leave out the backports a
Python 3.10 image needs. So pip runs here under a shim that answers markers for the image's
interpreter (CPython PYTHON_VERSION on Linux x86_64).

The tests (tests/test_images.py) use the same resolution to check that each pinned file is
complete and consistent. Only the standard library is needed, and a pip with ``--report``
(23.0 or later).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAKE_FILE = ROOT / "images" / "docker-bake.json"
REQUIREMENTS_IN = ROOT / "images" / "requirements.in"
SETUP_CFG = ROOT / "setup.cfg"

# glibc of each Ubuntu release a base image may be built on: a manylinux_2_N wheel runs there
# when N is at most this minor version.
GLIBC_OF_UBUNTU = {"22.04": 35, "jammy": 35, "24.04": 39, "noble": 39}

# pip's own settings that only say how to reach an index; every other PIP_* variable (extra
# indexes, find-links, constraints) and every pip configuration file is left out, so that the
# pins come from PyPI alone and mean the same on every machine.
_KEPT_PIP_VARIABLES = {"PIP_INDEX_URL", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_CACHE_DIR",
                       "PIP_NO_CACHE_DIR", "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST"}

# Run pip with environment markers evaluated for the target interpreter (see the docstring).
# pip's vendored packaging calls markers.default_environment() at each evaluation.
_PIP_SHIM = """\
import json, runpy, sys
import pip._vendor.packaging.markers as markers
environment = json.loads(sys.argv.pop(1))
markers.default_environment = lambda: dict(environment)
sys.argv[0] = "pip"
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""


class ResolutionError(RuntimeError):
    """pip could not resolve a set of requirements (its message is in the exception)."""


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load_bake(path: Path = BAKE_FILE) -> dict:
    return json.loads(path.read_text())


def notebook_targets(bake: dict) -> dict[str, dict[str, str]]:
    """``{target name: build args}`` of the notebook images (the ``default`` group)."""
    return {name: dict(bake["target"][name]["args"]) for name in bake["group"]["default"]["targets"]}


def image_id_of(args: dict[str, str]) -> str:
    """The catalog image id a target builds: its REQUIREMENTS file is ``<image id>.txt``."""
    return Path(args["REQUIREMENTS"]).stem


def tensorflow_requirement(args: dict[str, str]) -> str:
    distribution = "tensorflow" if args["CUDA_VERSION"] else "tensorflow-cpu"
    return f"{distribution}=={args['TENSORFLOW_VERSION']}"


def glibc_minor(base_image: str) -> int:
    """The glibc minor version of an Ubuntu-based image reference (nvidia/cuda or ubuntu)."""
    for release, minor in GLIBC_OF_UBUNTU.items():
        if re.search(rf"(ubuntu|:){re.escape(release)}\b", base_image):
            return minor
    raise ValueError(f"cannot tell the Ubuntu release (and so the glibc) of {base_image!r}: "
                     f"known are {sorted(GLIBC_OF_UBUNTU)}")


def manylinux_platforms(glibc: int, arch: str = "x86_64") -> list[str]:
    """Every manylinux tag a wheel may carry to run on this glibc, newest first.

    pip does not widen ``--platform manylinux_2_35_x86_64`` to the older tags that also run
    there (most wheels are manylinux_2_17 or 2_27), so all of them are named.
    """
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    return tags + [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def marker_environment(python_version: str) -> dict[str, str]:
    """PEP 508 marker values of CPython ``python_version`` on Linux x86_64 (the images)."""
    full = python_version if python_version.count(".") == 2 else f"{python_version}.0"
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": "posix",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": full,
        "python_version": ".".join(python_version.split(".")[:2]),
        "sys_platform": "linux",
    }


def package_requirements(setup_cfg: Path = SETUP_CFG) -> list[str]:
    """What ``jupyterhub-credits[singleuser]`` requires, as setup.cfg states it."""
    config = configparser.ConfigParser()
    config.read(setup_cfg)
    lines = (config["options"]["install_requires"] + "\n"
             + config["options.extras_require"]["singleuser"]).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def requirements_in(path: Path = REQUIREMENTS_IN) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def top_level_requirements(args: dict[str, str]) -> list[str]:
    return [tensorflow_requirement(args), *requirements_in(), *package_requirements()]


def pip_environment(cache_dir: str | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PIP_") or key in _KEPT_PIP_VARIABLES}
    env["PIP_CONFIG_FILE"] = os.devnull  # no pip.conf, user or global
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if cache_dir is not None:
        env["PIP_CACHE_DIR"] = cache_dir
        env.pop("PIP_NO_CACHE_DIR", None)
    return env


def resolve(requirements: list[str], python_version: str, glibc: int,
            *, cache_dir: str | None = None, timeout: float = 600) -> dict[str, str]:
    """``{canonical name: version}`` of everything pip would install for these requirements.

    Resolved from wheels only, for CPython ``python_version`` on manylinux x86_64 with this
    glibc, ignoring whatever is installed here. ResolutionError says why pip could not.
    """
    with tempfile.TemporaryDirectory(prefix="pin-") as scratch:
        requirements_file = Path(scratch, "requirements.txt")
        requirements_file.write_text("\n".join(requirements) + "\n")
        platforms = [arg for tag in manylinux_platforms(glibc) for arg in ("--platform", tag)]
        command = [
            sys.executable, "-c", _PIP_SHIM, json.dumps(marker_environment(python_version)),
            "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", python_version,
            *platforms, "-r", str(requirements_file),
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=pip_environment(cache_dir),
                                timeout=timeout, check=False)
    if result.returncode != 0:
        message = "\n".join(line for line in result.stderr.splitlines() if "is ignored" not in line)
        raise ResolutionError(f"pip could not resolve for Python {python_version}:\n{message.strip()}")
    report = json.loads(result.stdout)
    return {canonical_name(item["metadata"]["name"]): item["metadata"]["version"]
            for item in report["install"]}


def render(image_id: str, args: dict[str, str], pins: dict[str, str]) -> str:
    glibc = glibc_minor(args["BASE_IMAGE"])
    header = [
        f"# Pinned Python requirements of the notebook image {image_id}:",
        f"# {tensorflow_requirement(args)}, Python {args['PYTHON_VERSION']}, "
        f"manylinux_2_{glibc}_x86_64 wheels ({args['BASE_IMAGE']}).",
        "# Written by images/pin.py from images/requirements.in, setup.cfg and",
        "# images/docker-bake.json. Do not edit: run `python images/pin.py` to re-pin.",
    ]
    return "\n".join(header + [f"{name}=={pins[name]}" for name in sorted(pins)]) + "\n"


def pin_target(args: dict[str, str]) -> tuple[str, str]:
    image_id = image_id_of(args)
    pins = resolve(top_level_requirements(args), args["PYTHON_VERSION"], glibc_minor(args["BASE_IMAGE"]))
    return image_id, render(image_id, args, pins)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image_ids", nargs="*", metavar="IMAGE", help="catalog image ids (default: all)")
    options = parser.parse_args(argv)
    targets = {image_id_of(args): args for args in notebook_targets(load_bake()).values()}
    unknown = sorted(set(options.image_ids) - set(targets))
    if unknown:
        parser.error(f"no notebook target builds {', '.join(unknown)} (known: {', '.join(sorted(targets))})")
    chosen = [targets[image_id] for image_id in (options.image_ids or targets)]
    # Each resolution mostly waits on PyPI: run them side by side.
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        try:
            results = list(pool.map(pin_target, chosen))
        except ResolutionError as error:
            print(error, file=sys.stderr)
            return 1
    for (image_id, text), args in zip(results, chosen):
        path = ROOT / args["REQUIREMENTS"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"{image_id}: {len(text.splitlines()) - 4} pins -> {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
