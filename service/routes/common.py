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
