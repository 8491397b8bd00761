"""The API's own description: ``GET /api/openapi.yaml`` and ``GET /api/openapi.json``.

``openapi.yaml`` is the file shipped next to this module, served as it is
(``text/yaml``); ``openapi.json`` is the same document parsed, as JSON. No
login is needed: the spec says what exists, never anyone's data. Both are read
and built once per process and kept in memory (the file changes only with the
package). Listed in ``default_handlers`` like every API route, so they come
before the API's catch-all ``NotFoundHandler``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import yaml
from tornado import web

SPEC_PATH = Path(__file__).with_name("openapi.yaml")


@functools.cache
def spec_yaml() -> bytes:
    """The shipped spec file's bytes."""
    return SPEC_PATH.read_bytes()


@functools.cache
def spec_json() -> bytes:
    """The spec parsed and written as JSON (a date YAML reads as one becomes its ISO text)."""
    document = yaml.safe_load(spec_yaml())
    return json.dumps(document, default=str).encode()


class _SpecHandler(web.RequestHandler):
    content_type = ""

    def body(self) -> bytes:
        raise NotImplementedError

    def get(self):
        self.set_header("Content-Type", self.content_type)
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.body())

    def write_error(self, status_code, **kwargs):
        # As every API error: JSON, and nothing of the internals.
        self.set_header("Content-Type", "application/json")
        message = "internal error in the credits service (see its log)" if status_code >= 500 \
            else self._reason
        self.finish(json.dumps({"status": status_code, "message": message}))


class OpenAPIYAMLHandler(_SpecHandler):
    content_type = "text/yaml; charset=UTF-8"

    def body(self) -> bytes:
        return spec_yaml()


class OpenAPIJSONHandler(_SpecHandler):
    content_type = "application/json"

    def body(self) -> bytes:
        return spec_json()


default_handlers = [
    (r"/api/openapi\.yaml", OpenAPIYAMLHandler),
    (r"/api/openapi\.json", OpenAPIJSONHandler),
]
