"""Endpoint URLs go through the netguard, like every URL a tenant supplies."""

from __future__ import annotations

import httpx

from pigeon.config import Settings
from pigeon.netguard import UrlNotAllowed, check_url_shape, check_url_target

FIELD = "url"


async def check_endpoint_url(url: str, settings: Settings) -> str:
    """The URL as stored; a 422 naming `url` when Pigeon must not post to it.

    A webhook URL may carry a query (a receiver's own token, say), which a provider's base URL
    may not: the shape is checked without it.
    """
    text = url.strip()
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UrlNotAllowed(FIELD, f"is not a valid URL ({exc})") from None
    if parsed.fragment:
        raise UrlNotAllowed(FIELD, "must not have a fragment")
    allow = settings.allow_private_urls
    check_url_shape(str(parsed.copy_with(query=None)), allow_private=allow, field=FIELD)
    await check_url_target(text, allow_private=allow, field=FIELD)
    return text
