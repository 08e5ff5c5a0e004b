"""FastAPI dependencies as ``Annotated`` aliases; the only code that reads ``app.state``, with the probes (which
take no dependencies: :mod:`service.routes.health`, :mod:`service.probes`). They are ``async``: FastAPI
runs a plain ``def`` dependency in a worker thread, a thread hop per dependency per request."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.batching import Batcher
from service.errors import Forbidden, Unauthorized
from service.metrics import Metrics
from service.registry import Registry
from service.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def _batcher(request: Request) -> Batcher:
    return request.app.state.batcher  # type: ignore[no-any-return]


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


# Declares the scheme in the OpenAPI document; the checks and their errors are ours (auto_error=False).
_bearer = HTTPBearer(auto_error=False, scheme_name="admin",
                     description="the admin token (REALMQA_ADMIN_TOKEN or REALMQA_ADMIN_TOKEN_FILE)")


async def _admin(request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    """Admin routes: ``Authorization: Bearer <admin_token>``, compared in constant time.

    Raises:
        Forbidden: no admin token is configured (admin routes are disabled), or the token is wrong.
        Unauthorized: no bearer token was sent.
    """
    token = request.app.state.settings.admin_token
    if token is None:
        raise Forbidden("admin routes are disabled: set REALMQA_ADMIN_TOKEN or REALMQA_ADMIN_TOKEN_FILE "
                        "to enable them")
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("admin routes need 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
    given = credentials.credentials.strip().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise Forbidden("the bearer token is not the admin token")


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[Registry, Depends(_registry)]
BatcherDep = Annotated[Batcher, Depends(_batcher)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
AdminDep = Depends(_admin)  # router-level: APIRouter(dependencies=[AdminDep])
