"""The pinned Python requirements of each catalog image, shipped as package data.

Nomenclature:

- *image id*: a key of the catalog's ``images`` section (``tf-2.21``, ``tf-2.21-cpu``).
- *pinned file*: ``requirements/<image id>.txt``, one ``name==version`` line for every
  distribution the image installs with pip (comments start with ``#``). The container image
  installs exactly this file (``images/Dockerfile``), and a local environment for the same image
  is built from it (``jupyterhub-credits envs build``), so both run the same versions.
- *pins*: the pinned file read as ``{canonical name: version}``.

The files are written by ``images/pin.py`` from ``images/requirements.in``; do not edit them by
hand. A pure layer: it imports nothing from JupyterHub or Tornado.
"""

from __future__ import annotations

import re
from pathlib import Path

REQUIREMENTS_DIR = Path(__file__).resolve().parent / "requirements"

# PEP 503 normalisation: "Jupyter_Server" and "jupyter-server" are one distribution.
_SEPARATORS = re.compile(r"[-_.]+")
# A pin line: a distribution name, "==" and an exact version (no ranges, no markers).
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(?P<version>[A-Za-z0-9.+!_-]+)$")


def canonical_name(name: str) -> str:
    """The PEP 503 form of a distribution name (lower case, runs of ``-_.`` as one ``-``)."""
    return _SEPARATORS.sub("-", name).lower()


def requirements_path(image_id: str) -> Path:
    """The pinned file of ``image_id``; FileNotFoundError (naming the path) if there is none."""
    # An id is a file name, never a path: "../x" must not reach outside the directory.
    path = REQUIREMENTS_DIR / f"{image_id}.txt"
    if "/" in image_id or "\\" in image_id or image_id.startswith(".") or not path.is_file():
        raise FileNotFoundError(f"no pinned requirements for image {image_id!r} (expected {path})")
    return path


def read_pins(path: str | Path) -> dict[str, str]:
    """``{canonical name: version}`` from a pinned file; ValueError for a line that is not a pin.

    Every line must be ``name==version``, a comment or blank: a range or a marker would make the
    file mean different things on different machines, which is what pinning is meant to prevent.
    """
    pins: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not an exact pin (name==version): {raw.strip()!r}")
        name = canonical_name(match["name"])
        if name in pins:
            raise ValueError(f"{path}:{number}: {name} is pinned twice")
        pins[name] = match["version"]
    return pins
