"""ASGI middleware: 413 for a request body over ``max_body_bytes``, declared (``content-length``) or not
(chunked transfer encoding), before any handler parses it."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, ServiceError


class BodyLimitMiddleware:
    """Reads the body up to the limit and replays it to the app; past the limit answers 413 at once.

    Args:
        respond: turns a :class:`ServiceError` into an ASGI app (the service's one JSON error shape).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, respond: Callable[[ServiceError], ASGIApp]) -> None:
        self.app, self.max_bytes, self.respond = app, max_bytes, respond

    def _too_large(self, what: str) -> ServiceError:
        return PayloadTooLarge(f"request body of {what} bytes is larger than {self.max_bytes}", param=None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.respond(self._too_large(declared.decode()))(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self.respond(self._too_large(f"more than {size}"))(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
