"""The ceiling of the HTTP layer: a bare ASGI app on Pigeon's server stack, no database.

It parses the same JSON body, checks the same header and answers the same JSON as
`POST /v1/users/{id}/message/sms`, so the harness can state Pigeon's ingest as a share of
what uvicorn (uvloop, httptools) can do at all on this machine.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec


class Content(msgspec.Struct, forbid_unknown_fields=True):
    text: str


class Body(msgspec.Struct, forbid_unknown_fields=True):
    content: Content


API_KEY = b"AXVubzpwQDU1dzByYM=="
STATUS = {
    "groupId": 1,
    "groupName": "PENDING",
    "id": 26,
    "name": "PENDING_ACCEPTED",
    "description": "Message sent to next instance",
}
_ids = itertools.count(3919977727444335893722)
_decoder = msgspec.json.Decoder(Body)


async def _body(receive: Any) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every POST like Pigeon's accept path would, minus the database."""
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    body = await _body(receive)
    status = 200
    if headers.get(b"x-api-key") != API_KEY:
        status, payload = 401, b'{"code":"invalid_api_key"}'
    else:
        request = _decoder.decode(body)
        payload = msgspec.json.encode(
            {
                "messages": [
                    {
                        "messageId": str(next(_ids)),
                        "status": STATUS,
                        "destination": "38598123456" if request.content.text else "",
                    }
                ]
            }
        )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})
