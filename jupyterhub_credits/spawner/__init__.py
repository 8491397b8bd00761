"""Spawners that charge credits: on one machine (local processes) or on Kubernetes."""

from .local import CreditsLocalProcessSpawner, CreditsSimpleLocalProcessSpawner
from .mixin import CreditsSpawner

__all__ = ["CreditsLocalProcessSpawner", "CreditsSimpleLocalProcessSpawner", "CreditsSpawner"]
