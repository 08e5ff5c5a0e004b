"""FastAPI dependencies as ``Annotated`` aliases; the only code that reads ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.registry import Registry
from service.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[Registry, Depends(_registry)]
