"""Keep the server's own hub token out of every answer this server sends to a browser.

Under JupyterHub, the single-user server's identity provider reports the server's API
token (``JUPYTERHUB_API_TOKEN``) as the server's ``token``, and jupyter_server's
``page.html`` writes it into ``data-jupyter-api-token`` of every HTML page it renders
for a logged-in viewer — its error pages included, so an admin who opens a wrong URL
of alice's server receives alice's server token. That token may extend sessions with
alice's credits (the ``server`` role has ``custom:credits:spend!user``), so no viewer
may see it. :class:`RedactToken` is a Tornado output transform that blanks it out of
any response body, whatever the handler.
"""

from __future__ import annotations

from tornado.web import OutputTransform


def redact_transform(token: str | None):
    """An output-transform class that removes ``token`` from response bodies (None: nothing)."""
    if not token:
        return None
    secret = token.encode()

    class RedactToken(OutputTransform):
        def transform_first_chunk(self, status_code, headers, chunk, finishing):
            if secret in chunk:
                chunk = chunk.replace(secret, b"")
                # finish() counted the body before the transforms ran.
                if "Content-Length" in headers:
                    headers["Content-Length"] = str(len(chunk))
            return status_code, headers, chunk

        def transform_chunk(self, chunk, finishing):
            # Streamed bodies (file downloads) are the user's own data, written in chunks;
            # the token in one of them is still removed where it is whole.
            return chunk.replace(secret, b"") if secret in chunk else chunk

    return RedactToken
