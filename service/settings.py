"""Service settings: one pydantic-settings class read from, highest priority first, the caller's (CLI
flags') values, ``REALMQA_*`` environment variables, and an optional config file (TOML, JSON or .env by
suffix) named by ``REALMQA_CONFIG_FILE`` or ``realmqa serve --config``. Built by :func:`load_settings`
(the CLI) or the caller of :func:`service.app.create_app`, never at import; a bad value fails at start
with a message naming the setting. This is the only module that reads the environment.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from index.home import Home
from index.options import EXECUTORS, BuildOptions, SearchParams, WorkerOptions

BUNDLED_HOME = Path(__file__).resolve().parent / "default"
ENV_PREFIX = "REALMQA_"
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"

# The config file of the Settings being built (set by load_settings; else REALMQA_CONFIG_FILE).
_config_file: ContextVar[Path | None] = ContextVar("realmqa_config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    home: Path = Field(BUNDLED_HOME, description="registry home with models/ and indexes/ (default: the bundle)")
    model: str | None = Field(None, description="load only this model (name or name/version); default: every one")
    default_model: str | None = Field(None, description="model a request without \"model\" gets; default: the first")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind")
    workers: int = Field(
        1, ge=1, le=64, description="server processes sharing the port, each with its own copy of the models "
                                    "(memory × N) and batcher; metrics are summed over them; admin model loads "
                                    "and unloads answer 409 when there are several (bench/README.md, \"Workers\")")
    admin_token: SecretStr | None = Field(
        None, description="bearer token for admin routes; none disables them (environment or config file only, "
                          "never a command-line flag: it would show in ps)")
    admin_token_file: Path | None = Field(
        None, description="file holding the admin token (a mounted secret); read at start, trailing newline dropped")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads per worker (0: torch's default, "
                                                      "or the CPUs divided among the workers when several)")
    switch_interval_ms: float = Field(
        0, ge=0, le=100, description="the interpreter's thread switch interval (sys.setswitchinterval), ms, while "
                                       "serving: how long the engine thread may wait for the GIL after each torch op "
                                       "while the event loop is busy (0: Python's own, 5 ms)")
    precision: Literal["fp32", "int8", "fp16", "bf16"] | None = Field(
        None, description="the reader's precision for every model, overriding model.json's \"precision\" "
                          "(fp32; int8: dynamic int8 on the CPU; fp16/bf16: CUDA only)")
    build_missing_index: bool = Field(True, description="build the model's index from its corpus if none exists")
    max_body_bytes: int = Field(65536, gt=0, description="largest request body, bytes, chunked or not (413 beyond)")
    max_question_chars: int = Field(2000, gt=0, description="longest question or query, characters (413 beyond)")
    default_reader_beam_size: int = Field(5, gt=0, description="blocks the reader reads (REALM: 5)")
    max_reader_beam_size: int = Field(50, gt=0, description="largest reader_beam_size a request may ask")
    default_k: int = Field(10, gt=0, description="blocks /retrieve returns by default")
    max_k: int = Field(100, gt=0, description="largest k a request may ask")
    max_batch_size: int = Field(32, gt=0, description="most requests run as one batch (1: no batching)")
    max_batch_tokens: int = Field(
        65536, gt=0, description="most reader tokens (reader_beam_size × reader_seq_len per question) in one "
                                 "/answer batch; a single larger request still runs, alone")
    max_queue_delay_ms: float = Field(
        2.0, ge=0, description="longest a request waits for others to join its batch, ms")
    max_queue_size: int = Field(256, gt=0, description="requests waiting for the engine; beyond, 429 at once")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 429")
    request_timeout_ms: float = Field(
        30000.0, gt=0,
        description="deadline of a request, ms from when it is queued (504 beyond; a request may ask less)")
    index_poll_interval_s: float = Field(
        0.0, ge=0, description="look for newly published index versions every this many seconds and swap to one "
                               "built by a served model (0: off; the index worker can notify instead)")
    nprobe: int = Field(SearchParams.nprobe, gt=0,
                        description="inverted lists an IVF index searches (more: better recall, slower)")
    ef_search: int = Field(SearchParams.ef_search, gt=0,
                           description="HNSW search beam, efSearch (more: better recall, slower)")
    # index builds (realmqa index build, the index worker, the service's build of a missing index)
    index_chunk_blocks: int = Field(BuildOptions.chunk_blocks, gt=0, description="blocks per resumable build chunk")
    index_batch_size: int = Field(BuildOptions.batch_size, gt=0, description="texts per embedding forward pass")
    index_train_sample: int = Field(BuildOptions.train_sample, gt=0,
                                    description="most block embeddings an IVF/PQ index is trained on")
    index_publish_tries: int = Field(BuildOptions.publish_tries, gt=0,
                                     description="version numbers a publish tries before it gives up")
    index_chunk_pause_s: float = Field(BuildOptions.chunk_pause_s, ge=0,
                                       description="sleep after each embedded chunk, s (throttle on a shared machine)")
    index_parts: str = Field("", description="extra parts of each built version, comma-separated names of "
                                             "index.pipeline.PART_BUILDERS (e.g. a sparse index)")
    index_executor: str = Field("local", description=f"who embeds build chunks: one of {sorted(EXECUTORS)}")
    index_device: str = Field("auto", description="torch device builds embed on: auto (cuda when torch sees "
                                                  "a GPU, else cpu), cpu, cuda, cuda:N")
    worker_poll_s: float = Field(WorkerOptions.poll_s, gt=0, description="how often the index worker looks for jobs, s")
    worker_max_attempts: int = Field(WorkerOptions.max_attempts, gt=0,
                                     description="claims of one job (its workers dying) before it is filed as failed")
    worker_service_url: str | None = Field(None, description="service the index worker asks to activate each new "
                                                             "version (with admin_token); none: the service polls")
    readiness_interval_s: float = Field(
        10.0, gt=0, description="seconds between two real readiness checks (one question through the batcher, in "
                                "the background; /readyz itself only reads their result)")
    shutdown_timeout_s: float = Field(
        20.0, ge=0, description="on SIGTERM, how long queued work may still finish; the rest gets 503")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        if path is None and os.environ.get(CONFIG_FILE_ENV):
            path = Path(os.environ[CONFIG_FILE_ENV])
        if path is None:
            return init_settings, env_settings
        return init_settings, env_settings, config_file_source(settings_cls, path)

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
        if not Home(v).models_dir.is_dir():
            raise ValueError(f"REALMQA_HOME {v} has no models/ directory")
        return v

    @model_validator(mode="after")
    def _token_from_file(self) -> Settings:
        if self.admin_token_file is None:
            return self
        if self.admin_token is not None:
            raise ValueError("set REALMQA_ADMIN_TOKEN or REALMQA_ADMIN_TOKEN_FILE, not both")
        try:
            text = self.admin_token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"REALMQA_ADMIN_TOKEN_FILE cannot be read: {type(e).__name__}") from None
        self.admin_token = SecretStr(text.rstrip("\r\n"))
        self._token_not_blank(self.admin_token)
        return self

    @field_validator("index_executor")
    @classmethod
    def _known_executor(cls, v: str) -> str:
        if v not in EXECUTORS:
            raise ValueError(f"must be one of {sorted(EXECUTORS)}")
        return v

    @field_validator("admin_token")
    @classmethod
    def _token_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < 8:
            raise ValueError("REALMQA_ADMIN_TOKEN (or the file REALMQA_ADMIN_TOKEN_FILE) must have at least 8 "
                             "non-blank characters (or be unset)")
        return v


# Config file parsers by suffix (a registry, not an if/elif chain).
_FILE_SOURCES: dict[str, Any] = {
    ".toml": lambda cls, p: TomlConfigSettingsSource(cls, toml_file=p),
    ".json": lambda cls, p: JsonConfigSettingsSource(cls, json_file=p),
    ".env": lambda cls, p: DotEnvSettingsSource(cls, env_file=p, env_prefix=ENV_PREFIX),
}


def config_file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    """The pydantic-settings source for a config file: TOML and JSON keys are setting names
    (``max_batch_size = 8``); a ``.env`` file holds ``REALMQA_*`` lines.

    Raises:
        ValueError: the file is missing or its suffix is not ``.toml``, ``.json`` or ``.env``.
    """
    if not path.is_file():
        raise ValueError(f"config file {path} ({CONFIG_FILE_ENV}) does not exist")
    make = _FILE_SOURCES.get(path.suffix) or (_FILE_SOURCES[".env"] if path.name.endswith(".env") else None)
    if make is None:
        raise ValueError(f"config file {path} ({CONFIG_FILE_ENV}): suffix must be one of {sorted(_FILE_SOURCES)}")
    return make(settings_cls, path)  # type: ignore[no-any-return]


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``overrides`` (None values ignored), the environment and ``config_file`` (or
    ``REALMQA_CONFIG_FILE``).

    Raises:
        pydantic.ValidationError: a setting has a bad value (the error names it).
        ValueError: the config file is missing or of an unknown kind.
    """
    token = _config_file.set(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def build_options(settings: Settings, factory: str = "Flat") -> BuildOptions:
    """The build options the settings say (the one place settings become build options)."""
    return BuildOptions(factory=factory, chunk_blocks=settings.index_chunk_blocks,
                        batch_size=settings.index_batch_size, train_sample=settings.index_train_sample,
                        search=SearchParams(settings.nprobe, settings.ef_search),
                        chunk_pause_s=settings.index_chunk_pause_s, publish_tries=settings.index_publish_tries,
                        parts=tuple(p.strip() for p in settings.index_parts.split(",") if p.strip()))


def index_device(settings: Settings) -> str:
    """``index_device`` with ``auto`` resolved: cuda when torch sees a GPU, else cpu."""
    if settings.index_device != "auto":
        return settings.index_device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_options(settings: Settings) -> WorkerOptions:
    secret = settings.admin_token.get_secret_value() if settings.admin_token else None
    return WorkerOptions(build=build_options(settings), poll_s=settings.worker_poll_s,
                         max_attempts=settings.worker_max_attempts, device=index_device(settings),
                         executor=settings.index_executor,
                         service_url=settings.worker_service_url, admin_token=secret)
