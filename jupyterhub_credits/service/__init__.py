"""The ``credits`` managed JupyterHub service: REST API (``api/``) and the meter (``meter``).

Started by the hub as ``python -m jupyterhub_credits.service`` (see ``app``).
"""
