"""Spawners that charge credits: on one machine (local processes) or on Kubernetes."""

from .local import CreditsLocalProcessSpawner, CreditsSimpleLocalProcessSpawner
from .mixin import CreditsSpawner

# CreditsKubeSpawner is left out of __all__: a star import must not need kubespawner.
__all__ = ["CreditsLocalProcessSpawner", "CreditsSimpleLocalProcessSpawner", "CreditsSpawner"]


def __getattr__(name):
    # kubespawner is an optional extra: import the Kubernetes spawner only when asked for.
    if name == "CreditsKubeSpawner":
        from .kube import CreditsKubeSpawner

        return CreditsKubeSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
