"""``POST /api/events``: a single-user server (or its user) reports activity that may earn.

The body is a JSON list of events ``{"kind", "key", "time", "payload"}``; the
answer is a list with one outcome per event, in order: ``{"key", "kind",
"outcome": "earned"|"capped"|"duplicate"|"rejected", "points", "units", "rule",
"reason"}`` (``points`` a decimal string of credits, a training run's
efficiency bonus included; ``bonus`` details it).

Who: the single-user server's own token (``JUPYTERHUB_API_TOKEN``: the hub's
model for it is the server's *user*, with ``custom:credits:events!user=NAME``)
or one of the user's own tokens. Events are always that caller's: nothing in
the request names another user. Everything sent here is a claim by a process
the user controls (source ``"server"``): events only the hub reports (login,
signup, model_*) are rejected by the rules, and claims earn only while the
user has a running session, within the daily bound.

Refused as a whole: a body that is not JSON, or not a list (400); more than
``MAX_BATCH`` events or a body over ``MAX_BODY_BYTES`` (413). The service's HTTP
server refuses a body over ``max_body_size`` (by default ``MAX_BODY_BYTES``)
before reading it, from its Content-Length (400, connection closed).
"""

from __future__ import annotations

import json

from ...earning import MAX_BATCH, SERVER, EarningError
from ...earning.store import MAX_PAYLOAD_BYTES
from ...quoting import unstorable_text
from ..auth import EVENTS
from .base import APIError, APIHandler

#: Bytes of one event's JSON besides its payload, at the most: a key of MAX_KEY_LENGTH
#: (200) and a kind of 64 characters, each written as 6-byte "\uXXXX" escapes in the worst
#: case (1,584 bytes), a time (about 35), the field names, quotes and separators (about 50).
EVENT_ENVELOPE_BYTES = 2048
#: The largest request body the service reads (bytes): the largest legitimate batch,
#: MAX_BATCH (1,000) events, each a payload of up to MAX_PAYLOAD_BYTES (16,384, the most
#: that is kept) in its envelope: 1,000 × (16,384 + 2,048) = 18,432,000 bytes, about 18 MB.
#: The service's HTTP server refuses a longer body from its Content-Length, before reading
#: it (``CreditsService.max_body_size``, which defaults to this); the check in
#: ``parse_batch`` holds for a body that reached us anyway (a server configured higher).
MAX_BODY_BYTES = MAX_BATCH * (MAX_PAYLOAD_BYTES + EVENT_ENVELOPE_BYTES)


def parse_batch(body: bytes) -> list:
    """The request body as a list of (unchecked) events; APIError when it is not one."""
    if len(body) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes; "
                            f"send at most {MAX_BATCH} events at a time")
    try:
        batch = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise APIError(400, "the request body is not valid JSON: send a JSON list of events "
                            '{"kind", "key", "time", "payload"}') from None
    if not isinstance(batch, list):
        raise APIError(400, "the request body must be a JSON list of events "
                            '{"kind", "key", "time", "payload"}, not a JSON '
                            f"{_json_type(batch)}")
    if len(batch) > MAX_BATCH:
        raise APIError(413, f"at most {MAX_BATCH} events at a time, got {len(batch)}")
    problem = unstorable_text(batch, "the request body")
    if problem:
        raise APIError(400, problem + "; nothing in this batch was recorded")
    return batch


def _json_type(value) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


class EventsAPIHandler(APIHandler):
    async def post(self):
        model = self.require_user()
        user = model["name"]
        self.require(EVENTS, user=user, groups=model.get("groups") or ())
        batch = parse_batch(self.request.body)
        if not batch:
            self.write_json([])
            return
        earning = self.credits.earning
        if earning is None:
            raise APIError(503, "earning is not available in this service process")
        try:
            answers = await self.run(earning.record, user, batch, source=SERVER)
        except EarningError as error:
            raise APIError(400, str(error)) from None
        self.write_json(answers)


default_handlers = [(r"/api/events", EventsAPIHandler)]
