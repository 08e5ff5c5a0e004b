"""The closed set of errors the service raises, and their one JSON shape.

``{"error": {"type": str, "message": str, "param": str | null}}``. Core packages never import FastAPI;
these classes carry their HTTP status and are mapped once in :func:`service.app.create_app`.
"""

from __future__ import annotations

import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path


class ServiceError(Exception):
    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"type": self.type, "message": self.message, "param": self.param}}


class BadRequest(ServiceError):
    """The body is not parsable (not JSON, truncated, nested too deep)."""

    status, type = 400, "bad_request"


class InvalidInput(ServiceError):
    status, type = 422, "invalid_request"


class NotFound(ServiceError):
    status, type = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, type = 405, "method_not_allowed"


class PayloadTooLarge(ServiceError):
    status, type = 413, "payload_too_large"


class Overloaded(ServiceError):
    status, type = 429, "overloaded"


class NotReady(ServiceError):
    status, type = 503, "not_ready"


class DeadlinePassed(ServiceError):
    status, type = 504, "deadline_exceeded"


class Unauthorized(ServiceError):
    status, type = 401, "unauthorized"


class Forbidden(ServiceError):
    status, type = 403, "forbidden"


class IndexRejected(ServiceError):
    """An index version failed its checks (files, manifest, embedder, smoke search) and was not swapped in;
    the version serving before keeps serving."""

    status, type = 409, "index_rejected"


class Conflict(ServiceError):
    """The request cannot be carried out the way this server runs (a model load or unload on a server of
    several ``--workers``: it would change one worker process and not the others)."""

    status, type = 409, "conflict"


class LoadFailed(ServiceError):
    """A model version could not be loaded; whatever served before keeps serving."""

    status, type = 500, "load_failed"


class InternalError(ServiceError):
    """The last resort for an exception no handler expected: logged with its traceback, answered without it."""

    status, type = 500, "internal_error"


# Statuses the framework answers itself (unknown route, wrong method, ...) → the error type they get.
_BY_STATUS: dict[int, type[ServiceError]] = {c.status: c for c in (
    BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, IndexRejected, PayloadTooLarge, InvalidInput,
    Overloaded, InternalError, NotReady, DeadlinePassed)}


def for_status(status: int, message: str, headers: dict[str, str] | None = None) -> ServiceError:
    """A framework HTTP error (Starlette's ``HTTPException``) as one of ours, its headers (``Allow``) kept."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        err = ServiceError(message, headers=headers)
        err.status, err.type = status, "bad_request" if status < 500 else "internal_error"
        return err
    return cls(message, headers=headers)


@lru_cache(maxsize=8)
def _path_roots(home: Path | None) -> tuple[re.Pattern[str], dict[str, str]]:
    """A pattern matching this machine's absolute roots (longest first), and the label of each."""
    roots = {str(Path(sys.prefix)): "<python>", str(Path(sys.base_prefix)): "<python>",
             str(Path(__file__).resolve().parents[1]): "<realmqa>", tempfile.gettempdir(): "<tmp>",
             str(Path.home()): "~"}
    if home is not None:
        roots.update({str(home): "<home>", str(home.resolve()): "<home>"})
    roots = {r: label for r, label in roots.items() if r not in ("", "/")}
    pattern = re.compile("|".join(re.escape(r) + r"(?=/|\b|$)" for r in sorted(roots, key=len, reverse=True)))
    return pattern, roots


def public_text(text: str, home: Path | None = None) -> str:
    """``text`` without this machine's absolute paths: the home, the Python installation, realmqa's own
    directory, the temporary directory and the user's home become ``<home>``, ``<python>``, ``<realmqa>``,
    ``<tmp>``, ``~``. For messages that quote an exception (a failed load, a refused index version)."""
    pattern, labels = _path_roots(home)
    return pattern.sub(lambda m: labels[m.group(0)], text)
