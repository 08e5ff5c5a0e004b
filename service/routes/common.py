"""Input checks shared by the routes."""

from __future__ import annotations

from service.errors import InvalidInput, PayloadTooLarge
from service.settings import Settings


def check_text(text: str, param: str, settings: Settings) -> None:
    """Raises InvalidInput for a blank text, PayloadTooLarge beyond ``max_question_chars``."""
    if not text.strip():
        raise InvalidInput(f"{param} must not be blank", param=param)
    if len(text) > settings.max_question_chars:
        raise PayloadTooLarge(f"{param} has {len(text)} characters, more than {settings.max_question_chars}",
                              param=param)


def timeout_s(requested_ms: float | None, settings: Settings) -> float:
    """A request's deadline in seconds: its own ``timeout_ms`` if given, never past ``request_timeout_ms``."""
    ms = settings.request_timeout_ms if requested_ms is None else min(requested_ms, settings.request_timeout_ms)
    return ms / 1e3
