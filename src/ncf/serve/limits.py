"""Default request limits of the HTTP service, shared by ``create_app`` and ``ncf serve``
(a module of its own so that the CLI reads them without importing FastAPI)."""

MAX_BODY_BYTES = 64 * 1024  # a POST body is one small JSON object
MAX_EVENTS_PER_USER = 10_000  # recorded interactions per user and events namespace
MAX_ITEMS_PER_REQUEST = 100  # interactions one POST may record ({"items": [...]})
