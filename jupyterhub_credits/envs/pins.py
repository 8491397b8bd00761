"""What goes into an image's environment: its pinned requirements, with the TensorFlow
build that fits this machine, then this package itself.

An image's pinned file (``jupyterhub_credits/images/requirements/<image id>.txt``)
pins ``tensorflow==X`` (GPU images, on a CUDA base) or ``tensorflow-cpu==X``. On
one machine there is no CUDA base image: with GPUs the environment gets
``tensorflow[and-cuda]==X`` (TensorFlow's pip route to CUDA and cuDNN as wheels),
without them ``tensorflow-cpu==X``. Every other pin is installed as it is.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..images import requirements_path
from .layout import Expected

PACKAGE = "jupyterhub-credits"

#: ``tensorflow==2.21.0``, ``tensorflow-cpu == 2.21.0``, ``tensorflow[and-cuda]==2.21.0``
_TENSORFLOW_LINE = re.compile(
    r"^\s*(?P<name>tensorflow(?:[-_.](?:cpu|gpu))?)\s*(?:\[[^\]]*\])?\s*==\s*(?P<version>[^\s;#]+)",
    re.IGNORECASE)


class PinsError(ValueError):
    """An image's pinned requirements are missing or cannot be used."""


def pinned_requirements(image_id: str, requirements_dir: str | Path | None = None) -> Path:
    """The pinned file of ``image_id``: in ``requirements_dir`` when given, else the one
    shipped with this package."""
    if requirements_dir is not None:
        path = Path(requirements_dir) / f"{image_id}.txt"
        if not path.is_file():
            raise PinsError(f"no pinned requirements for image {image_id!r} (expected {path})")
        return path
    try:
        return requirements_path(image_id)
    except FileNotFoundError as error:
        raise PinsError(str(error)) from None


@dataclass(frozen=True)
class Requirements:
    """The requirements an environment of one image is built from on this machine."""

    text: str  # the pinned file with its TensorFlow line for this machine
    tensorflow: str  # that line, e.g. "tensorflow-cpu==2.21.0"
    sha256: str  # of the pinned file as shipped

    @property
    def expected(self) -> Expected:
        return Expected(self.tensorflow, self.sha256)


def tensorflow_for_machine(text: str, *, gpu: bool, source: str = "the pinned file"
                           ) -> tuple[str, str]:
    """``text`` with its one TensorFlow pin replaced by the build for this machine.

    Returns (new text, the new TensorFlow requirement).
    """
    lines = text.splitlines()
    found = [(number, match) for number, line in enumerate(lines)
             if (match := _TENSORFLOW_LINE.match(line))]
    if len(found) != 1:
        raise PinsError(f"{source} must pin TensorFlow exactly once (tensorflow==X or "
                        f"tensorflow-cpu==X); it has {len(found)} such lines")
    number, match = found[0]
    version = match.group("version")
    requirement = f"tensorflow[and-cuda]=={version}" if gpu else f"tensorflow-cpu=={version}"
    lines[number] = requirement
    return "\n".join(lines) + "\n", requirement


def requirements_for(path: Path, *, gpu: bool) -> Requirements:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PinsError(f"cannot read {path}: {error.strerror or error}") from None
    text, tensorflow = tensorflow_for_machine(data.decode("utf-8"), gpu=gpu, source=str(path))
    return Requirements(text, tensorflow, hashlib.sha256(data).hexdigest())


def package_source(direct_url: dict | None, version: str) -> str:
    """How pip should install this package into an environment, given how it was installed
    here (PEP 610's direct_url.json): the same source directory or wheel file, the same VCS
    commit, else this version from the package index."""
    if isinstance(direct_url, dict):
        url = str(direct_url.get("url", ""))
        parsed = urlparse(url)
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
            if ("dir_info" in direct_url or "archive_info" in direct_url) and path.exists():
                return str(path)
        vcs = direct_url.get("vcs_info")
        if isinstance(vcs, dict) and vcs.get("vcs") and vcs.get("commit_id"):
            return f"{PACKAGE} @ {vcs['vcs']}+{url}@{vcs['commit_id']}"
    return f"{PACKAGE}=={version}"


def this_package_source() -> str:
    """``package_source`` of the jupyterhub-credits running this code."""
    # A source checkout on sys.path adds its own *.egg-info, which has no direct_url.json:
    # the installed distribution's record is the one that says where it came from.
    found = list(metadata.distributions(name=PACKAGE))
    if not found:  # running from a source tree, not installed
        return str(Path(__file__).resolve().parents[2])
    for distribution in found:
        text = distribution.read_text("direct_url.json")
        if text:
            try:
                return package_source(json.loads(text), distribution.version)
            except ValueError:
                continue
    return package_source(None, found[0].version)


__all__ = ["PACKAGE", "PinsError", "Requirements", "package_source",
           "pinned_requirements", "requirements_for", "tensorflow_for_machine",
           "this_package_source"]
