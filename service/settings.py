"""Service settings: one pydantic-settings class read from ``REALMQA_*`` environment variables and
the CLI's flags. Built by the CLI or the caller of :func:`service.app.create_app`, never at import;
a bad value fails at start with pydantic's message naming the setting.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_HOME = Path(__file__).resolve().parent / "default"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REALMQA_", extra="forbid")

    home: Path = Field(BUNDLED_HOME, description="registry home with models/ and indexes/ (default: the bundle)")
    model: str | None = Field(None, description="model to serve (name or name/version); default: the first")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind")
    admin_token: str | None = Field(None, description="bearer token for admin routes; none disables them")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads (0: torch's default)")
    build_missing_index: bool = Field(True, description="build the model's index from its corpus if none exists")
    max_body_bytes: int = Field(65536, gt=0, description="largest request body, bytes (413 beyond)")
    max_question_chars: int = Field(2000, gt=0, description="longest question or query, characters (413 beyond)")
    default_reader_beam_size: int = Field(5, gt=0, description="blocks the reader reads (REALM: 5)")
    max_reader_beam_size: int = Field(50, gt=0, description="largest reader_beam_size a request may ask")
    default_k: int = Field(10, gt=0, description="blocks /retrieve returns by default")
    max_k: int = Field(100, gt=0, description="largest k a request may ask")

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Settings:
        if self.default_reader_beam_size > self.max_reader_beam_size:
            raise ValueError("default_reader_beam_size must not exceed max_reader_beam_size")
        if self.default_k > self.max_k:
            raise ValueError("default_k must not exceed max_k")
        return self

    @field_validator("home")
    @classmethod
    def _home_exists(cls, v: Path) -> Path:
        if not (v / "models").is_dir():
            raise ValueError(f"REALMQA_HOME {v} has no models/ directory")
        return v
