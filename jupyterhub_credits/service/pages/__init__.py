"""The credits pages (HTML in the hub's look): My credits and the admin panel.

Each page module exports ``routes``: ``(path relative to the service prefix,
handler)`` pairs, collected by ``page_handlers``.
"""

from __future__ import annotations

from . import admin, my_credits
from .base import STATIC_DIR, PageHandler, template_environment


def page_handlers(prefix: str) -> list:
    """Routes under ``prefix`` ("" is the prefix itself, with or without its final slash)."""
    return [(prefix + path if path else prefix.rstrip("/") + "/?", handler)
            for module in (my_credits, admin) for path, handler in module.routes]


__all__ = ["STATIC_DIR", "PageHandler", "page_handlers", "template_environment"]
