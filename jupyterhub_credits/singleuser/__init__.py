"""The single-user side of jupyterhub-credits (Python extra ``singleuser``).

- :mod:`.reporter`: a thread-safe event reporter that batches events, POSTs them to
  the credits service with the server's own token and retries with the same
  idempotency keys; unsent events survive a restart in a small JSON file.
- :mod:`.extension`: the Jupyter Server extension (activity minutes, GPU sampler,
  the credits panel's API) and its parts: :mod:`.handlers` (``GET credits/status``,
  ``POST credits/extend``, answered server-side so no token reaches the browser),
  :mod:`.status` (the cached, single-flight, backing-off client of the credits
  service), :mod:`.runs` (the training-runs journal), :mod:`.stopping` (the stop
  announced to the open pages, with time to save), :mod:`.tensorboard` (the
  jupyter-server-proxy entry point).
- :mod:`.gpu`: the NVML sampler and its pure per-minute summariser.

Importing this package imports neither jupyter_server nor NVML nor TensorFlow.
"""

from __future__ import annotations


def _jupyter_server_extension_points():
    """Enabled as ``jupyterhub_credits.singleuser`` in ``jpserver_extensions``."""
    return [{"module": "jupyterhub_credits.singleuser.extension"}]
