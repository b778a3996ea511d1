"""Issue 20: deploy/kubernetes renders (kustomize, as `kubectl kustomize`) and every object validates
offline against the Kubernetes JSON schemas (``kubernetes-validate``, strict: unknown fields fail),
and the Deployment keeps the service's own rules (probes, grace above the shutdown grace, non-root,
read-only root, secrets by reference, settings that exist).

`kubectl kustomize` renders where kubectl is installed (the development machines). Where it is not
(Debian's archive has only kubectl 1.20, whose kustomize rejects these files' syntax), `render_lite`
renders the few kustomize features these files use, with `jsonpatch` for the patches, and fails on any
other feature, so the checks run on every CI machine; only the generated ConfigMap's hash suffix is
kubectl's alone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
OVERLAYS = ("small-clinic", "large-clinic")
SCHEMA_VERSION = "1.30.0"  # the oldest Kubernetes the manifests promise to work on
SECRET_SETTINGS = ("DERMTRIAGE_API_KEYS", "DERMTRIAGE_CDS_ISSUERS", "DERMTRIAGE_DATABASE_URL", "DERMTRIAGE_REDIS_URL")
IDLE_RSS_GIB = 1.7  # README, Performance: idle RSS 1620-1685 MiB after warm-up, peak 1.7 GiB with heatmaps
WARM_UP_S = 15  # README, Container image: ready in 12-15 s in CI


LITE_FEATURES = {"apiVersion", "kind", "resources", "labels", "namespace", "images", "configMapGenerator", "patches"}


def render(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return render_lite(directory)
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render_lite(directory: Path) -> list[dict[str, Any]]:
    """kustomize's semantics for exactly the features in LITE_FEATURES (labels with includeTemplates only)."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(k) <= LITE_FEATURES, f"render_lite does not know {set(k) - LITE_FEATURES}: install kubectl"
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = directory / res
        docs += render_lite(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        data = dict(lit.split("=", 1) for lit in gen["literals"])
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for p in k.get("patches", []):
        target, ops = p["target"], jsonpatch.JsonPatch(yaml.safe_load(p["patch"]))
        hits = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == (target["kind"], target["name"])]
        assert hits, f"patch target {target} matches nothing"
        for i in hits:
            docs[i] = ops.apply(docs[i])
    for rule in k.get("labels", []):
        assert set(rule) <= {"pairs", "includeTemplates"}, rule
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(rule["pairs"])
            template = d.get("spec", {}).get("template")
            if rule.get("includeTemplates") and template:
                template.setdefault("metadata", {}).setdefault("labels", {}).update(rule["pairs"])
    for d in docs:
        if "namespace" in k:
            d["metadata"]["namespace"] = k["namespace"]
        for image in k.get("images", []):
            for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if c["image"].rsplit(":", 1)[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


def test_lite_rendering_agrees_with_kubectl() -> None:
    """Where kubectl is installed, the fallback renders the same objects (bar the ConfigMap's hash)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed here: nothing to compare the fallback with")
    for directory in (KUBE / "base", *(KUBE / "overlays" / o for o in OVERLAYS)):
        real, lite = render(directory), render_lite(directory)
        config = next((d["metadata"]["name"] for d in real if d["kind"] == "ConfigMap"), None)
        text = yaml.safe_dump(sorted(real, key=lambda d: d["kind"]))
        if config:
            text = text.replace(config, config.rsplit("-", 1)[0])  # kubectl's hash suffix, and the refs to it
        assert text == yaml.safe_dump(sorted(lite, key=lambda d: d["kind"])), directory


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs), "one object of each kind"
    return kinds


def quantity_gib(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(Mi|Gi)", text).groups()  # type: ignore[union-attr]
    return float(number) / (1024 if unit == "Mi" else 1)


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    directory = KUBE / "base" if overlay == "base" else KUBE / "overlays" / overlay
    docs = render(directory)
    kinds = {d["kind"] for d in docs}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
    assert expected <= kinds, kinds
    for doc in docs:
        kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)  # raises ValidationError


def test_schema_validation_catches_a_wrong_field() -> None:
    """The check is real: a misspelt field and a wrong type fail."""
    deployment = by_kind(render(KUBE / "base"))["Deployment"]
    wrong = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, SCHEMA_VERSION, strict=True)
    wrong = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_keeps_the_service_rules(overlay: str) -> None:
    kinds = by_kind(render(KUBE / "overlays" / overlay))
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    # probes: liveness on /health/live, readiness on /health/ready, a start-up budget past the warm-up
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 8 * WARM_UP_S
    # SIGTERM: requests in flight get the shutdown grace, and Kubernetes waits longer than that
    grace = float(env["DERMTRIAGE_SHUTDOWN_GRACE_S"]["value"])
    assert grace == Settings().shutdown_grace_s
    assert pod["terminationGracePeriodSeconds"] >= grace + 10
    # non-root, read-only root, nothing to escalate; writable paths are volumes
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/dermtriage", "/var/cache/dermtriage"} <= mounts
    assert not pod["automountServiceAccountToken"]
    # resources from the measured figures; torch threads follow the CPU limit (cgroup cpu.max)
    res = container["resources"]
    assert quantity_gib(res["requests"]["memory"]) >= IDLE_RSS_GIB
    assert quantity_gib(res["limits"]["memory"]) >= quantity_gib(res["requests"]["memory"])
    assert res["limits"]["cpu"] == res["requests"]["cpu"]
    # credentials only by reference, and every DERMTRIAGE_ variable is a real setting
    for name in SECRET_SETTINGS:
        assert "secretKeyRef" in env[name]["valueFrom"] and "value" not in env[name], name
    fields = {Settings.env_name(f) for f in Settings.model_fields}
    assert {n for n in env if n.startswith("DERMTRIAGE_")} <= fields
    assert env["DERMTRIAGE_WORKERS"]["value"] == "1"  # pods scale out, not workers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_targets_agree(overlay: str) -> None:
    kinds = by_kind(render(KUBE / "overlays" / overlay))
    deployment = kinds["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for kind, selector in (
        ("Service", kinds["Service"]["spec"]["selector"]),
        ("PodDisruptionBudget", kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]),
        ("NetworkPolicy", kinds["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]),
    ):
        assert selector and selector.items() <= pod_labels.items(), kind
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    config = kinds["ConfigMap"]["metadata"]["name"]
    refs = [
        e["valueFrom"]["configMapKeyRef"]["name"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if "configMapKeyRef" in e.get("valueFrom", {})
    ]
    assert refs and set(refs) == {config}  # the generated (with kubectl: hashed) name is what the pod reads


def test_overlays_size_differently() -> None:
    small, large = (by_kind(render(KUBE / "overlays" / o)) for o in OVERLAYS)
    s_hpa, l_hpa = small["HorizontalPodAutoscaler"]["spec"], large["HorizontalPodAutoscaler"]["spec"]
    assert (s_hpa["minReplicas"], s_hpa["maxReplicas"]) == (1, 2)
    assert (l_hpa["minReplicas"], l_hpa["maxReplicas"]) == (3, 12)
    assert large["Deployment"]["spec"]["replicas"] == 3 and small["Deployment"]["spec"]["replicas"] == 1
    for kinds in (small, large):  # a PDB that still lets a node drain at the smallest size
        assert kinds["PodDisruptionBudget"]["spec"] == {
            "maxUnavailable": 1,
            "selector": kinds["PodDisruptionBudget"]["spec"]["selector"],
        }
