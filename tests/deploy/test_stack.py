"""The image and the compose stack, for real (marker ``docker``: not in the default run, it builds images for
minutes). From the repository as it is (on a machine that cannot reach PyTorch's CPU index, put the CPU torch
wheel in ``wheels/`` first: ``wheels/README.md``):

    REALMQA_TEST_THREADS=1 python -m pytest -m docker -s tests/deploy/test_stack.py

- ``docker-compose build``, then ``up -d``: realmqa answers "Which NFL team represented the AFC at Super Bowl
  50?" with Denver Broncos, Prometheus scrapes it (``up{job="realmqa"} == 1``) with the alert rules loaded;
- a build job submitted to the worker in the stack publishes the next index version (the bundled default
  has 1 and 2, so 3), which the service swaps in by polling (``/v1/indexes``) and answers from;
- every PromQL query of the Grafana dashboard returns data from the stack's Prometheus;
- ``docker-compose down`` with requests in flight: each gets its answer, every container exits 0 (none 137);
- the image alone (``docker run``, read-only root filesystem) answers at once.

Figures (build time, image size, up → first answer, job → served) are printed with ``-s``. The stack runs as
compose project ``realmqa-test-<pid>`` on free host ports, and is removed with its volumes at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.dashboard import DASHBOARD, evaluate

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"
IN_FLIGHT = 12  # /answer requests sent just before `docker-compose down`: each must get its answer
IMAGE = "realmqa:latest"
# A small corpus for the worker's build job, written inside the worker container from the bundled corpus:
# the Super Bowl 50 paragraphs (so that the new version still answers the question) and the first 300 others.
SMALL_CORPUS = """
import gzip, itertools, json
src = '/data/corpus/squad-v1.1-paragraphs.jsonl.gz'
docs = [json.loads(line) for line in gzip.open(src, 'rt', encoding='utf-8')]
keep = [d for d in docs if d['title'] == 'Super Bowl 50'] + [d for d in docs if d['title'] != 'Super Bowl 50'][:300]
open('/data/corpus/stack-test.jsonl', 'w').write(''.join(json.dumps(d) + '\\n' for d in keep))
print(len(keep))
"""


def docker_missing() -> str | None:
    for tool in ("docker", "docker-compose"):
        if not shutil.which(tool):
            return f"{tool} is not installed (bash ../shared/tools/docker-here.sh on these machines)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "the Docker daemon does not answer (docker info failed)"
    return None


def bundled_index_version() -> int:
    """The newest index version the image bundles (``service/default``): the stack serves it, and the worker's
    build job publishes the next. Read when a test runs, not at import: collecting this module (the default run
    deselects it) must not depend on the bundled indexes, which the README says may be deleted."""
    versions = [int(d.name) for d in (ROOT / "service" / "default" / "indexes" / "minilm-squad").glob("*")
                if d.name.isdigit()]
    if not versions:
        pytest.fail("service/default/indexes/minilm-squad holds no index version: the image would bundle none")
    return max(versions)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    realmqa: str
    prometheus: str
    figures: dict[str, float]

    def compose(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["docker-compose", "-p", self.project, *args]
        r = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
        return r


def wait_for(what: str, probe, timeout_s: float, every_s: float = 1.0):  # noqa: ANN001, ANN201
    """Call ``probe`` until it returns a truthy value; its last exception or value in the failure message."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
            last = value
        except (httpx.HTTPError, ValueError, KeyError) as e:
            last = e
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")


def answer(base: str, timeout_s: float = 60.0) -> dict:
    r = httpx.post(f"{base}/answer", json={"question": QUESTION}, timeout=timeout_s)
    r.raise_for_status()
    return dict(r.json())


def prom_query(base: str, query: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": query}, timeout=10)
    r.raise_for_status()
    return list(r.json()["data"]["result"])


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    reason = docker_missing()
    if reason:
        pytest.skip(reason)
    project = f"realmqa-test-{os.getpid()}"
    port, prom_port = free_port(), free_port()
    env = {**os.environ, "REALMQA_PORT_HOST": str(port), "PROMETHEUS_PORT_HOST": str(prom_port),
           "REALMQA_INDEX_POLL_INTERVAL_S": "2"}
    env.pop("REALMQA_ADMIN_TOKEN", None)
    s = Stack(project, env, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}", {})
    t0 = time.monotonic()
    s.compose("build")
    s.figures["build_s"] = time.monotonic() - t0
    size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE], capture_output=True,
                          text=True, check=True).stdout
    s.figures["image_mb"] = int(size) / 1e6
    say(f"build {s.figures['build_s']:.1f} s (cached layers are not rebuilt), "
        f"image {IMAGE} {s.figures['image_mb']:.0f} MB")
    try:
        t0 = time.monotonic()
        s.compose("up", "-d")
        body = wait_for("first answer", lambda: answer(s.realmqa, 10), timeout_s=600)
        s.figures["up_to_first_answer_s"] = time.monotonic() - t0
        say(f"up -d → first answer {s.figures['up_to_first_answer_s']:.1f} s: {body['answer']!r}")
        yield s
    finally:
        r = s.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        if r.returncode != 0:
            say(f"down -v failed: {r.stderr[-2000:]}")


def test_stack_answers_and_prometheus_scrapes_it(stack: Stack) -> None:
    body = answer(stack.realmqa)
    assert body["answer"] == "Denver Broncos"
    assert body["index"] == f"minilm-squad/{bundled_index_version()}"
    up = wait_for('Prometheus up{job="realmqa"}', lambda: prom_query(stack.prometheus, 'up{job="realmqa"} == 1'),
                  timeout_s=90, every_s=2)
    assert up[0]["metric"]["instance"] == "realmqa:8000"

    def rules_evaluated() -> list[dict]:
        # each group is first evaluated within one evaluation_interval (15 s) of loading: health "unknown" until
        # then, so wait for that rather than read it once; a rule that failed stays "err" and fails below
        groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if len(rules) < 6 or any(r["health"] == "unknown" for r in rules):
            return []
        return rules

    loaded = wait_for("Prometheus alert rules evaluated", rules_evaluated, timeout_s=60, every_s=2)
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r["health"], r.get("lastError")) for r in loaded]
    say(f"Prometheus: up{{job=\"realmqa\"}} = {up[0]['value'][1]}, {len(loaded)} alert rules loaded, health ok")


def test_worker_build_job_is_published_and_served(stack: Stack) -> None:
    next_version = bundled_index_version() + 1
    def served_next() -> bool:
        indexes = httpx.get(f"{stack.realmqa}/v1/indexes", timeout=10).json()["indexes"]
        versions = {v["version"]: v for i in indexes if i["name"] == "minilm-squad" for v in i["versions"]}
        return next_version in versions and bool(versions[next_version]["served_by"])

    assert not served_next(), f"index version {next_version} exists before the build job"
    n = stack.compose("exec", "-T", "worker", "python3", "-c", SMALL_CORPUS).stdout.strip()
    t0 = time.monotonic()
    job = stack.compose("exec", "-T", "worker", "realmqa", "index", "submit", "--home", "/data",
                        "--model", "minilm-squad", "--corpus", "/data/corpus/stack-test.jsonl",
                        "--index", "minilm-squad").stdout.strip()
    say(f"submitted job {job!r} ({n} documents)")
    wait_for(f"index version {next_version} served", served_next, timeout_s=900, every_s=2)
    stack.figures["job_to_served_s"] = time.monotonic() - t0
    body = answer(stack.realmqa)
    assert body["index"] == f"minilm-squad/{next_version}" and body["answer"] == "Denver Broncos"
    say(f"job → version {next_version} served {stack.figures['job_to_served_s']:.1f} s; "
        f"/answer from minilm-squad/{next_version}: {body['answer']!r}")


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    # traffic for every panel: answers and retrieves in parallel (batches), and requests whose deadline
    # passes in the queue (504, realmqa_rejected_requests_total{reason="deadline"})
    def one(i: int) -> int:
        if i % 4 == 3:
            body = {"question": QUESTION, "timeout_ms": 0.001}
            return httpx.post(f"{stack.realmqa}/answer", json=body, timeout=60).status_code
        route, body = ("/retrieve", {"query": "Super Bowl 50"}) if i % 2 else ("/answer", {"question": QUESTION})
        return httpx.post(f"{stack.realmqa}{route}", json=body, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(48)))
    assert statuses.count(200) >= 24 and 504 in statuses, statuses
    time.sleep(12)  # two scrapes at 5 s
    results = evaluate(stack.prometheus, json.loads(DASHBOARD.read_text()))
    for r in results:
        say(f"dashboard {r.query.panel} [{r.query.ref}]: {r.error or f'{r.series} series'}")
    empty = [(r.query.panel, r.query.ref, r.error) for r in results if r.error or r.series == 0]
    say(f"dashboard: {len(results) - len(empty)} of {len(results)} queries returned data")
    assert not empty


def test_down_drains_requests_in_flight_and_exits_cleanly(stack: Stack) -> None:
    events = subprocess.Popen(
        ["docker", "events", "--filter", f"label=com.docker.compose.project={stack.project}",
         "--filter", "event=die", "--format", "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}"],
        stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(lambda: httpx.post(f"{stack.realmqa}/answer", json={"question": QUESTION},
                                                      timeout=60).status_code) for _ in range(IN_FLIGHT)]
            time.sleep(0.3)  # the requests are queued or running
            t0 = time.monotonic()
            stack.compose("down", timeout=300)
            down_s = time.monotonic() - t0
            statuses = [f.result() for f in futures]
        exits: dict[str, str] = {}
        reader = threading.Thread(target=lambda: [exits.__setitem__(*line.split()) for line in events.stdout])
        reader.start()
        time.sleep(2)
    finally:
        events.terminate()
    reader.join(timeout=10)
    say(f"down {down_s:.1f} s with {IN_FLIGHT} requests in flight: statuses {statuses}; exit codes {exits}")
    assert statuses == [200] * IN_FLIGHT
    assert len(exits) == 3 and set(exits.values()) == {"0"}, exits


@contextmanager
def alone(name: str, port: int, *args: str) -> Iterator[str]:
    """``docker run`` the image alone on a read-only root (``/tmp`` a tmpfs), published on ``port``; yields its
    URL; the container and its anonymous volume are removed at the end."""
    subprocess.run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", "--read-only",
                    "--tmpfs", "/tmp", *args, IMAGE], check=True, capture_output=True, timeout=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, timeout=60)


def stop(name: str) -> str:
    """``docker stop`` (30 s of grace) and the container's exit code."""
    subprocess.run(["docker", "stop", "-t", "30", name], check=True, capture_output=True, timeout=60)
    return subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_image_alone_answers_at_once_on_a_read_only_root(stack: Stack) -> None:
    name = f"{stack.project}-alone"
    t0 = time.monotonic()
    with alone(name, free_port()) as base:
        body = wait_for("first answer of the image alone", lambda: answer(base, 10), timeout_s=600)
        alone_s = time.monotonic() - t0
        assert body["answer"] == "Denver Broncos"
        wait_for("healthy", lambda: subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", name], capture_output=True,
            text=True).stdout.strip() == "healthy", timeout_s=120, every_s=2)
        code = stop(name)
    say(f"docker run → first answer {alone_s:.1f} s (read-only root, /data an anonymous volume); "
        f"HEALTHCHECK healthy; docker stop → exit {code}")
    assert code == "0"


def test_image_with_two_workers_on_a_read_only_root(stack: Stack) -> None:
    """``REALMQA_WORKERS=2`` in the image: both workers start (their metrics directory under the tmpfs ``/tmp``),
    the answers are the bundled ones, every scrape counts the answers of both, ``docker stop`` exits 0."""
    name = f"{stack.project}-workers"
    with alone(name, free_port(), "-e", "REALMQA_WORKERS=2") as base:
        def started() -> int:
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
            return (logs.stdout + logs.stderr).count("Application startup complete")

        wait_for("two workers started", lambda: started() >= 2, timeout_s=600, every_s=2)
        for _ in range(4):  # new connections: the kernel spreads them over the workers
            assert answer(base, 30)["answer"] == "Denver Broncos"
        counts = set()
        for _ in range(6):
            text = httpx.get(base + "/metrics", timeout=10).text
            counts.add(sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                           if s.name == "realmqa_requests_total" and s.labels.get("route") == "/answer"))
        code = stop(name)
    say(f"docker run -e REALMQA_WORKERS=2 (read-only root): 4 answers, /metrics counted {sorted(counts)} in 6 "
        f"scrapes; docker stop → exit {code}")
    assert counts == {4.0} and code == "0"
