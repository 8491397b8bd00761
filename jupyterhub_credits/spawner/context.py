"""One ledger, session store and catalog per hub process, shared by all spawners."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..catalog import Catalog, load_catalog
from ..ledger import Ledger
from ..sessions.store import SessionStore


@dataclass
class CreditsContext:
    ledger: Ledger
    sessions: SessionStore
    catalog: Catalog
    #: Per-spawner-class extras (the local GPU allocator), built on first use.
    extras: dict = field(default_factory=dict)


_contexts: dict[tuple[str, str], CreditsContext] = {}
_lock = threading.Lock()


def shared_context(db_url: str, catalog_path: str) -> CreditsContext:
    key = (db_url, catalog_path)
    with _lock:
        context = _contexts.get(key)
        if context is None:
            catalog = load_catalog(catalog_path)
            ledger = Ledger.open(db_url)
            context = CreditsContext(ledger, SessionStore(ledger), catalog)
            _contexts[key] = context
        return context


def reset_contexts() -> None:
    """Forget every shared context (tests, and a hub reloading its configuration)."""
    with _lock:
        for context in _contexts.values():
            context.ledger.close()
        _contexts.clear()
