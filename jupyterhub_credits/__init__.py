"""jupyterhub-credits: users earn credits through activity and spend them on GPU servers."""

__version__ = "0.1.0"
