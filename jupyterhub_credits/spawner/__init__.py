"""Spawners that charge credits: on one machine (local processes) or on Kubernetes."""

from .local import CreditsLocalProcessSpawner, CreditsSimpleLocalProcessSpawner
from .mixin import CreditsSpawner

__all__ = ["CreditsKubeSpawner", "CreditsLocalProcessSpawner", "CreditsSimpleLocalProcessSpawner",
           "CreditsSpawner"]


def __getattr__(name):
    # kubespawner is an optional extra: import the Kubernetes spawner only when asked for.
    if name == "CreditsKubeSpawner":
        from .kube import CreditsKubeSpawner

        return CreditsKubeSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
