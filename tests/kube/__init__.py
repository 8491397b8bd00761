"""Kubernetes test harness: an in-process API server with a fake kubelet (``emulator``) and
strict manifest validation (``validation``), so spawner code is tested without a cluster."""
