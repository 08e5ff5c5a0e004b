"""service.settings: config files (TOML, JSON, .env) under the environment and flags; messages that name the
setting; ``realmqa serve --help`` lists every setting with its environment variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, load_settings


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    return tmp_path


@pytest.mark.parametrize("name, text", [
    ("c.toml", 'home = "{home}"\nmax_batch_size = 4\nmax_queue_delay_ms = 7.5\n'),
    ("c.json", '{{"home": "{home}", "max_batch_size": 4, "max_queue_delay_ms": 7.5}}'),
    ("c.env", "REALMQA_HOME={home}\nREALMQA_MAX_BATCH_SIZE=4\nREALMQA_MAX_QUEUE_DELAY_MS=7.5\n"),
])
def test_config_file_kinds(home: Path, name: str, text: str) -> None:
    path = home / name
    path.write_text(text.format(home=home))
    s = load_settings(path)
    assert (s.home, s.max_batch_size, s.max_queue_delay_ms) == (home, 4, 7.5)


def test_environment_beats_file_and_flags_beat_both(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = home / "c.toml"
    path.write_text(f'home = "{home}"\nmax_batch_size = 4\nmax_queue_size = 9\n')
    monkeypatch.setenv("REALMQA_MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("REALMQA_CONFIG_FILE", str(path))
    s = load_settings()
    assert (s.max_batch_size, s.max_queue_size) == (5, 9)
    assert load_settings(max_batch_size=6).max_batch_size == 6


def test_bad_values_name_the_setting(home: Path) -> None:
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings(home=home, max_batch_size=0)
    with pytest.raises(ValidationError, match="REALMQA_ADMIN_TOKEN"):
        Settings(home=home, admin_token="short")
    path = home / "c.toml"
    path.write_text("max_queue_size = -1\n")
    with pytest.raises(ValidationError, match="max_queue_size"):
        load_settings(path, home=home)
    with pytest.raises(ValueError, match="suffix"):
        (home / "c.yaml").write_text("x: 1\n")
        load_settings(home / "c.yaml")


def test_serve_help_lists_every_setting() -> None:
    out = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--help"], capture_output=True, text=True,
                         timeout=120, check=True, env={"COLUMNS": "200", "PATH": ""}).stdout
    for name in Settings.model_fields:
        if name == "admin_token":  # never a flag: it would show in ps
            assert "--admin-token " not in out and "--admin-token\n" not in out
            continue
        assert f"--{name.replace('_', '-')}" in out and f"REALMQA_{name.upper()}" in out, name
    assert "REALMQA_CONFIG_FILE" in out


def test_admin_token_from_environment_or_file_is_a_secret(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALMQA_ADMIN_TOKEN", "from-the-environment")
    s = load_settings(home=home)
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "from-the-environment"
    assert "from-the-environment" not in repr(s) and "from-the-environment" not in str(s.model_dump())
    monkeypatch.delenv("REALMQA_ADMIN_TOKEN")
    secret = home / "token"
    secret.write_text("mounted-secret-123\n")
    monkeypatch.setenv("REALMQA_ADMIN_TOKEN_FILE", str(secret))
    s = load_settings(home=home)
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "mounted-secret-123"
    monkeypatch.setenv("REALMQA_ADMIN_TOKEN", "from-the-environment")
    with pytest.raises(ValidationError, match="not both"):
        load_settings(home=home)
    monkeypatch.delenv("REALMQA_ADMIN_TOKEN")
    secret.write_text("short\n")
    with pytest.raises(ValidationError, match="at least 8"):
        load_settings(home=home)
    monkeypatch.setenv("REALMQA_ADMIN_TOKEN_FILE", str(home / "missing"))
    with pytest.raises(ValidationError, match="cannot be read"):
        load_settings(home=home)


def test_switch_interval_is_set_while_serving_and_restored(home: Path) -> None:
    """``switch_interval_ms``: the interpreter's switch interval while the app serves (the engine thread's wait for
    the GIL after each torch op), Python's own again after; 0 leaves it alone."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    before = sys.getswitchinterval()
    with TestClient(create_app(Settings(home=home, switch_interval_ms=0.25))):
        assert sys.getswitchinterval() == pytest.approx(0.00025)
    assert sys.getswitchinterval() == before
    with TestClient(create_app(Settings(home=home, switch_interval_ms=0))):
        assert sys.getswitchinterval() == before
