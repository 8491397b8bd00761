"""Local environments: each catalog image as a virtualenv on one machine.

On Kubernetes an image is a container image. On one machine the local spawners
run the chosen image's environment, ``<envs dir>/<image id>``, built by
``jupyterhub-credits envs build`` from the image's pinned requirements (see
``layout`` for the words, ``pins`` for what is installed, ``build`` for how).
An inner layer: nothing here imports JupyterHub or Tornado.
"""

from .build import BuildError, build_environment, machine_has_gpus
from .layout import (
    BROKEN,
    BUILT,
    DEFAULT_ENVS_DIR,
    ENVS_DIR_ENV,
    EVERY_IMAGE,
    MISSING,
    NOT_INSTALLED,
    SERVER_PROGRAM,
    STALE,
    EnvironmentState,
    Expected,
    build_command,
    default_envs_dir,
    environment_path,
    environment_state,
    installed_version,
    is_runnable,
    not_installed_message,
    same_environment,
    server_program,
)
from .pins import (
    PinsError,
    Requirements,
    package_source,
    pinned_requirements,
    requirements_for,
    tensorflow_for_machine,
    this_package_source,
)

__all__ = [
    "BROKEN", "BUILT", "DEFAULT_ENVS_DIR", "ENVS_DIR_ENV", "EVERY_IMAGE", "MISSING",
    "NOT_INSTALLED", "SERVER_PROGRAM", "STALE", "BuildError", "EnvironmentState", "Expected", "PinsError",
    "Requirements", "build_command", "build_environment", "default_envs_dir",
    "environment_path", "environment_state", "installed_version", "is_runnable",
    "machine_has_gpus", "not_installed_message", "package_source", "pinned_requirements",
    "requirements_for", "same_environment", "server_program", "tensorflow_for_machine",
    "this_package_source",
]
