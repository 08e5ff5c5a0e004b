"""The KubeRay overlay (deploy/k8s/overlays/ray) renders, its Kubernetes documents validate strictly, and the
RayCluster and the index worker agree: the worker is the ray executor's driver at the head's Ray Client port, the
head mounts the shared home, each embedder pod holds one GPU."""

from __future__ import annotations

import pytest

from tests.deploy.test_manifests import K8S, by_kind, kustomize

RAY = K8S / "overlays" / "ray"


def test_ray_overlay_renders_validates_and_wires_the_worker_to_the_head() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")
    docs = kustomize(RAY)
    for doc in docs:
        if not doc["apiVersion"].startswith("ray.io/"):  # KubeRay's CRD: no schema in kubernetes-validate
            kv.validate(doc, kv.latest_version(), strict=True)
    (rc,) = by_kind(docs, "RayCluster").values()
    assert rc["apiVersion"] == "ray.io/v1"
    head = rc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head schedules no embedder
    (hc,) = head["template"]["spec"]["containers"]
    assert 10001 in {p["containerPort"] for p in hc["ports"]}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in head["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"realmqa-home"} and by_kind(docs, "PersistentVolumeClaim")["realmqa-home"]
    (group,) = rc["spec"]["workerGroupSpecs"]
    (wc,) = group["template"]["spec"]["containers"]
    assert wc["resources"]["limits"]["nvidia.com/gpu"] == 1 and group["minReplicas"] <= group["replicas"]

    worker = by_kind(docs, "Deployment")["realmqa-index-worker"]["spec"]["template"]["spec"]
    (c,) = worker["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["REALMQA_INDEX_EXECUTOR"] == "ray"
    assert env["REALMQA_INDEX_RAY_ADDRESS"] == f"ray://{rc['metadata']['name']}-head-svc:10001"
    images = {c["image"], hc["image"], wc["image"]}
    assert len(images) == 1 and images.pop().endswith("-ray")  # one image: same Python, Ray and realmqa
