"""``GET /api/catalog``: images, GPU types with price and free count, the caller's quotas."""

from __future__ import annotations

from ...catalog import effective_quotas
from ..models import catalog_to_dict
from .base import APIHandler


def capacity(allocator):
    """(free, total) GPUs per type from this machine's allocator; (None, None) if unknown."""
    if allocator is None:
        return None, None
    return allocator.free(), allocator.total()


class CatalogAPIHandler(APIHandler):
    async def get(self):
        model = self.require_login()
        catalog = self.credits.catalog
        free, total = await self.run(capacity, self.credits.allocator)
        quotas = effective_quotas(catalog, model.get("groups") or ())
        self.write_json(catalog_to_dict(catalog, quotas, free, total))


default_handlers = [(r"/api/catalog", CatalogAPIHandler)]
