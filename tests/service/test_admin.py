"""Model registry over HTTP: /v1/models, /v1/indexes, admin load/unload behind the bearer token, a failing
load that keeps the old version serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine import Engine
from service.registry import Registry
from service.settings import Settings
from tests.service.fake_engine import FakeEngine
from tests.service.test_routes import assert_error
from tests.service.tiny_home import make_tiny_home

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fake_loader(name: str, version: int) -> Engine:
    if version == 3:
        raise ValueError("reader.safetensors is truncated")
    return FakeEngine(f"{name}/{version}", f"{name}-index/{version}")


@pytest.fixture()
def client(tmp_path: Path) -> TestClient:
    (tmp_path / "models").mkdir()
    registry = Registry({"fake": FakeEngine("fake/1")}, loader=fake_loader, on_disk=lambda: {"fake": [1, 2, 3]})
    with TestClient(create_app(Settings(home=tmp_path, admin_token=TOKEN), registry)) as c:
        yield c  # type: ignore[misc]


def test_admin_needs_a_token(client: TestClient) -> None:
    r = client.post("/v1/models/fake/versions/2/load")
    assert_error(r, 401, None)
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert_error(client.post("/v1/models/fake/versions/2/load", headers={"Authorization": "Basic x"}), 401, None)


def test_admin_wrong_token_is_403(client: TestClient) -> None:
    r = client.post("/v1/models/fake/versions/2/load", headers={"Authorization": "Bearer nope-nope"})
    assert_error(r, 403, None)
    assert "not the admin token" in r.json()["error"]["message"]


def test_admin_disabled_without_a_token(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    with TestClient(create_app(Settings(home=tmp_path), Registry({"fake": FakeEngine()}))) as c:
        r = c.post("/v1/models/fake/versions/1/unload", headers=AUTH)
        assert_error(r, 403, None)
        assert "disabled" in r.json()["error"]["message"] and "REALMQA_ADMIN_TOKEN" in r.json()["error"]["message"]
        assert c.post("/answer", json={"question": "x"}).status_code == 200  # the rest stays open
        for path in ("/healthz", "/readyz", "/metrics", "/v1/models", "/v1/indexes"):
            assert c.get(path).status_code == 200, path


def test_load_serves_the_new_version_and_unload_stops_it(client: TestClient) -> None:
    r = client.post("/v1/models/fake/versions/2/load", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"model": "fake/2", "index": "fake-index/2", "state": "ready"}
    assert client.post("/answer", json={"question": "x", "model": "fake"}).json()["model"] == "fake/2"
    assert client.post("/answer", json={"question": "x", "model": "fake/1"}).json()["model"] == "fake/1"
    versions = client.get("/v1/models").json()["models"][0]["versions"]
    assert [(v["version"], v["state"], v["index"]) for v in versions] == [
        (1, "ready", "fake-index/1"), (2, "ready", "fake-index/2"), (3, "available", None)]
    assert client.post("/v1/models/fake/versions/2/unload", headers=AUTH).json()["state"] == "unloaded"
    assert client.post("/answer", json={"question": "x", "model": "fake"}).json()["model"] == "fake/1"
    assert_error(client.post("/answer", json={"question": "x", "model": "fake/2"}), 404, "model")
    assert_error(client.post("/v1/models/fake/versions/2/unload", headers=AUTH), 404, "model")


def test_failing_load_keeps_the_old_version(client: TestClient) -> None:
    r = client.post("/v1/models/fake/versions/3/load", headers=AUTH)
    assert_error(r, 500, "model")
    assert r.json()["error"]["type"] == "load_failed" and "truncated" in r.json()["error"]["message"]
    assert client.post("/answer", json={"question": "x"}).json()["model"] == "fake/1"
    v3 = client.get("/v1/models").json()["models"][0]["versions"][2]
    assert v3["state"] == "failed" and "truncated" in v3["error"]
    assert client.get("/readyz").status_code == 200


def test_unknown_versions_are_404(client: TestClient) -> None:
    assert_error(client.post("/v1/models/fake/versions/9/load", headers=AUTH), 404, "model")
    assert_error(client.post("/v1/models/nope/versions/1/load", headers=AUTH), 404, "model")
    assert_error(client.post("/answer", json={"question": "x", "model": "fake/x"}), 422, "model")  # not a version
    assert_error(client.post("/answer", json={"question": "x", "model": "nope"}), 404, "model")


def test_real_failing_load_on_disk_keeps_serving(tmp_path: Path) -> None:
    """A broken version directory (weights missing) on a tiny random model home."""
    home = make_tiny_home(tmp_path / "h", blocks=20)
    broken = home / "models" / "tiny" / "2"
    shutil.copytree(home / "models" / "tiny" / "1", broken)
    (broken / "reader.safetensors").unlink()
    settings = Settings(home=home, admin_token=TOKEN, build_missing_index=False, model="tiny/1")
    with TestClient(create_app(settings)) as c:
        before = c.post("/answer", json={"question": "alpha bravo?"}).json()
        r = c.post("/v1/models/tiny/versions/2/load", headers=AUTH)
        assert_error(r, 500, "model")
        assert "reader.safetensors" in r.json()["error"]["message"]
        after = c.post("/answer", json={"question": "alpha bravo?"}).json()
        assert after["model"] == "tiny/1" and after["answer"] == before["answer"]
        models = c.get("/v1/models").json()["models"]
        assert models[0]["default"] and [(v["version"], v["state"]) for v in models[0]["versions"]] == [
            (1, "ready"), (2, "failed")]
        indexes = c.get("/v1/indexes").json()["indexes"]
        assert indexes == [{"name": "tiny", "versions": [{
            "version": 1, "embedder": "tiny/1", "blocks": 20,
            "created_at": json.loads((home / "indexes/tiny/1/manifest.json").read_text())["created_at"],
            "served_by": ["tiny/1"], "state": "ok", "error": None}]}]


def test_default_model_must_be_loaded(tmp_path: Path) -> None:
    from service.errors import NotFound

    home = make_tiny_home(tmp_path / "h", blocks=10)
    with pytest.raises(NotFound, match="default model 'other'"):
        Registry.from_home(home, build_missing=False, default="other")
    assert Registry.from_home(home, build_missing=False, default="tiny/1").get(None).model_ref == "tiny/1"
