"""FastAPI dependencies as ``Annotated`` aliases; the only code that reads ``app.state``."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.batching import Batcher
from service.errors import Forbidden, Unauthorized
from service.metrics import Metrics
from service.registry import Registry
from service.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def _batcher(request: Request) -> Batcher:
    return request.app.state.batcher  # type: ignore[no-any-return]


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def _admin(request: Request) -> None:
    """Admin routes: ``Authorization: Bearer <admin_token>``, compared in constant time.

    Raises:
        Forbidden: no admin token is configured (admin routes are disabled), or the token is wrong.
        Unauthorized: no bearer token was sent.
    """
    token: str | None = request.app.state.settings.admin_token
    if token is None:
        raise Forbidden("admin routes are disabled: set REALMQA_ADMIN_TOKEN to enable them")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("admin routes need 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("the bearer token is not the admin token")


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[Registry, Depends(_registry)]
BatcherDep = Annotated[Batcher, Depends(_batcher)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
AdminDep = Depends(_admin)  # router-level: APIRouter(dependencies=[AdminDep])
