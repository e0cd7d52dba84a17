"""The whole-body limit, enforced while a request body streams in (a pure ASGI middleware).

uvicorn hands a body to the app piece by piece (64 KiB at a time, pausing the socket until the app asks for
more), so counting the pieces as the app reads them bounds what the server takes in: a body with a
Content-Length over the limit is refused before any of it is read, a chunked one the moment its running total
passes the limit. Any answer sent before the body was read to its end closes the connection; otherwise uvicorn
would go on reading, and dropping, the rest of an upload of any size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLOSE = (b"connection", b"close")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, what: str) -> None:
        self.app, self.max_bytes, self.what = app, max_bytes, what  # what: the limit in words, for messages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        size = int(headers.get("content-length") or 0)  # h11 has already refused a malformed Content-Length
        if size > self.max_bytes:
            detail = f"upload of {size:,} bytes is over the limit of {self.max_bytes:,} bytes ({self.what})"
            return await JSONResponse({"detail": detail}, 413, headers={"connection": "close"})(scope, receive, send)
        # A request with neither header has no body in HTTP/1.1 (RFC 9112 6.3): nothing is left unread.
        unread = size > 0 or "transfer-encoding" in headers
        received = 0  # bytes of body the app has read, chunked framing not counted

        async def counting_receive() -> Message:
            nonlocal received, unread
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # FastAPI answers the exception as JSON, through closing_send
                    raise HTTPException(413, f"upload over the limit of {self.max_bytes:,} bytes ({self.what})")
                unread = unread and message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and unread:
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        await self.app(scope, counting_receive, closing_send)
