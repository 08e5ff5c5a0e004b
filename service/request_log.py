"""Request ids, JSON log lines and the last-resort error answer.

Every response carries ``X-Request-ID``: the client's when it sent a usable one (1–128 visible ASCII
characters), else a new one. Every log line is one JSON object (python-json-logger) that carries the
``request_id`` of the request it was written for; each request ends with one ``realmqa.access`` line with
its route, method, status and duration. An exception no handler expected is logged with its traceback and
answered 500 in the one error shape, without the traceback.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import IO

from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InternalError, ServiceError

HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"[\x21-\x7e]{1,128}")
request_id: ContextVar[str | None] = ContextVar("realmqa_request_id", default=None)
access_log = logging.getLogger("realmqa.access")
log = logging.getLogger(__name__)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (None outside a request) to every record; drops uvicorn's ANSI-coloured copy of
    the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.__dict__.pop("color_message", None)
        return True


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    """JSON lines on ``stream`` (stderr) for the root logger and uvicorn's (whose access log the middleware
    replaces)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                       rename_fields={"levelname": "level", "name": "logger"}))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


class RequestContextMiddleware:
    """Outermost middleware: sets the request id, logs one access line per request, and answers 500 in the
    error shape for an exception that reached it (when the response has not started).

    Args:
        respond: turns a :class:`ServiceError` into an ASGI app (the one JSON error shape).
    """

    def __init__(self, app: ASGIApp, respond: Callable[[ServiceError], ASGIApp]) -> None:
        self.app, self.respond = app, respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _VALID_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        status, started = 500, False
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                raise
            await self.respond(InternalError(f"internal error; quote request id {rid}"))(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None)
            access_log.info("%s %s %d", scope["method"], route or scope["path"], status, extra={
                "route": route or "other", "method": scope["method"], "status": status,
                "duration_ms": round((time.perf_counter() - t0) * 1e3, 3)})
            request_id.reset(token)
