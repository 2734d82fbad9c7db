"""The schedule route's HTTP details, shared by the route and the warm-cache fast path."""

from __future__ import annotations

from datetime import date

from opsdash.engine.blobs import ISO_DATE
from opsdash.readapi.errors import BadRequest

SCHEDULE_PATH = "/functions/v1/get-schedule"
CACHE_CONTROL = "private, max-age=300"


def parse_day(raw: str) -> date:
    if not ISO_DATE.fullmatch(raw):
        raise BadRequest("date must be a calendar date written YYYY-MM-DD")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"date {raw} is not a calendar date") from None


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison against a list of entity tags (or ``*``)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def view_headers(etag: str) -> dict[str, str]:
    """Headers of a 200 or 304 answer: private caching, revalidated by ETag."""
    return {"Cache-Control": CACHE_CONTROL, "Vary": "Authorization", "ETag": etag}
