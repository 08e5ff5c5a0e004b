"""The KubeRay overlay (deploy/k8s/overlays/ray) renders, its Kubernetes documents validate strictly, and the
RayCluster and the index worker agree: the worker joins the head's service as a node with no CPUs and runs the
index worker (the ray executor's driver) with the same cluster token as every Ray node, the head mounts the
shared home, each embedder pod holds one GPU, one image everywhere."""

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
    assert 6379 in {p["containerPort"] for p in hc["ports"]}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in head["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"realmqa-home"} and by_kind(docs, "PersistentVolumeClaim")["realmqa-home"]
    (group,) = rc["spec"]["workerGroupSpecs"]
    (wc,) = group["template"]["spec"]["containers"]
    assert wc["resources"]["limits"]["nvidia.com/gpu"] == 1 and group["minReplicas"] <= group["replicas"]

    worker = by_kind(docs, "Deployment")["realmqa-index-worker"]["spec"]["template"]["spec"]
    (c,) = worker["containers"]
    script = " ".join(c["args"])
    assert f"ray start --address={rc['metadata']['name']}-head-svc:6379 --num-cpus=0" in script
    assert script.endswith("exec realmqa index worker --home /data")
    env = {e["name"]: e for e in c["env"]}
    assert env["REALMQA_INDEX_EXECUTOR"]["value"] == "ray" and "RAY_ADDRESS" not in env  # the local node
    for container in (c, hc, wc):  # one cluster token for every node
        e = {x["name"]: x for x in container["env"]}
        assert e["RAY_AUTH_MODE"]["value"] == "token"
        assert e["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "realmqa-ray-auth", "key": "token"}
    images = {c["image"], hc["image"], wc["image"]}
    assert len(images) == 1 and images.pop().endswith("-ray")  # one image: same Python, Ray and realmqa
