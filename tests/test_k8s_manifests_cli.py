"""``cormorant k8s manifests``: the YAML the kubernetes fleet would apply, printed through the
gateway by a stack whose fleet is local, and valid against the Kubernetes 1.30 schemas."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml

from tests.conftest import Stack

ECHO = Path(__file__).resolve().parent / "models" / "echo"


def test_manifests_of_one_endpoint_and_of_all_validate(stack: Stack) -> None:
    """One endpoint's objects, every endpoint's, and a 404 naming the list for a typo."""
    client = stack.client()
    created = client.endpoints.create("k8s-review", ECHO, replicas={"min": 1, "max": 4})
    slug = created["slug"]
    client.endpoints.wait_until_running(slug)

    printed = stack.cli("k8s", "manifests", slug)
    assert printed.returncode == 0, printed.stderr
    objects = list(yaml.safe_load_all(printed.stdout))
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    for obj in objects:
        assert obj["metadata"]["labels"]["cormorant.dev/endpoint"] == slug
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
    [hpa] = [obj for obj in objects if obj["kind"] == "HorizontalPodAutoscaler"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    # The SDK answers the same objects.
    assert client.endpoints.manifests(slug)["objects"] == objects

    everything = stack.cli("k8s", "manifests")
    assert everything.returncode == 0, everything.stderr
    names = {obj["metadata"]["name"] for obj in yaml.safe_load_all(everything.stdout)}
    assert f"{slug}-v1" in names

    typo = stack.cli("k8s", "manifests", "no-such-endpoint")
    assert typo.returncode == 1
    assert "404" in typo.stderr
    assert "GET /api/v1/endpoints" in typo.stderr
    client.endpoints.delete(slug)
