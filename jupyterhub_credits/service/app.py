"""The credits service: a JupyterHub managed service serving the credits API and the meter."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from tornado import web
from tornado.ioloop import IOLoop
from traitlets import Unicode
from traitlets.config import Application


class HealthHandler(web.RequestHandler):
    def get(self):
        self.write({"status": "ok"})


class CreditsService(Application):
    name = "jupyterhub-credits-service"
    description = "Credits API and meter for jupyterhub-credits"

    service_url = Unicode(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"),
                          config=True, help="Where to listen (set by the hub).")
    service_prefix = Unicode(os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/credits/"),
                             config=True, help="URL prefix the hub's proxy routes to us.")

    def start(self):
        url = urlparse(self.service_url)
        app = web.Application([(self.service_prefix + "health", HealthHandler)])
        app.listen(url.port, url.hostname)
        self.log.info("credits service listening on %s", self.service_url)
        IOLoop.current().start()


def main(argv=None):
    CreditsService.launch_instance(argv)
