"""``python -m jupyterhub_credits.service``: the managed ``credits`` service."""

from .app import main

main()
