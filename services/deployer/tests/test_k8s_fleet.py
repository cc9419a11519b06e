"""The kubernetes fleet driven through the deployer's API against a recorded Kubernetes API.

No Kubernetes API server can run here: ``RecordedCluster`` (``tests/cluster_testkit.py``)
stands in for a cluster. It is a real HTTP server that the real kubernetes-asyncio client talks
to; it checks each call (server-side apply with the field manager, delete, list, watch), keeps
the objects, runs pods for each Deployment and replays what a kubelet reports (a pod becoming
ready, crashing, being evicted). NATS and PostgreSQL are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cluster_testkit import RecordedCluster
from deployer_testkit import DeployerHarness, running_deployer

from cormorant.deployer.settings import DeployerSettings
from cormorant.devstack.testing.waits import eventually
from cormorant.fleet.kubernetes.fleet import KubernetesFleet

NAMESPACE = "models"


def model(tmp_path: Path, name: str, answer: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "predict.py").write_text(f"def predict(x):\n    return {answer!r}\n")
    return directory


@pytest.fixture
async def cluster() -> AsyncIterator[RecordedCluster]:
    recorded = RecordedCluster(NAMESPACE)
    await recorded.start()
    try:
        yield recorded
    finally:
        await recorded.close()


@contextlib.asynccontextmanager
async def cluster_deployer(
    deployer_settings: DeployerSettings, cluster: RecordedCluster, tmp_path: Path,
    **update: Any,
) -> AsyncIterator[DeployerHarness]:  # fmt: skip
    """A deployer whose fleet is the recorded cluster's namespace (with ``update`` to its
    settings), once it watches the pods."""
    settings = deployer_settings.model_copy(
        update={
            "kind": "kubernetes",
            "k8s_namespace": NAMESPACE,
            "k8s_kubeconfig": cluster.kubeconfig(tmp_path / "kubeconfig"),
            "k8s_image": "images.test/cormorant:1",
            "reconcile_interval_s": 0.5,
            **update,
        }
    )
    async with running_deployer(settings) as harness:
        fleet = harness.state["fleet"]
        assert isinstance(fleet, KubernetesFleet)
        await eventually(fleet.watching.is_set, what="the pod watch")
        yield harness


@pytest.fixture
async def deployer(
    deployer_settings: DeployerSettings, cluster: RecordedCluster, tmp_path: Path
) -> AsyncIterator[DeployerHarness]:
    """A deployer whose fleet is the recorded cluster's namespace."""
    async with cluster_deployer(deployer_settings, cluster, tmp_path) as harness:
        yield harness


async def pods(cluster: RecordedCluster, deployment: str, count: int) -> list[str]:
    """The Deployment's pods once there are ``count``."""

    def check() -> tuple[list[str]] | None:
        found = cluster.pods_of(deployment)
        return (found,) if len(found) == count else None  # truthy even with no pods

    [found] = await eventually(check, what=f"{count} pod(s) of {deployment}")
    return found


async def routed(deployer: DeployerHarness, slug: str) -> dict[str, str]:
    """Version of each routed replica, by URL."""
    return {r["url"]: r["version"] for r in (await deployer.route(slug))["replicas"]}


async def routes_to(deployer: DeployerHarness, slug: str, expected: dict[str, str]) -> None:
    async def check() -> bool:
        return await routed(deployer, slug) == expected

    await eventually(check, what=f"{slug} routed to {expected}")


def applied_bodies(cluster: RecordedCluster, kind: str, name: str) -> list[dict[str, Any]]:
    return [
        c.body
        for c in cluster.calls
        if c.verb == "apply" and c.body and c.body["kind"] == kind
        and c.body["metadata"]["name"] == name
    ]  # fmt: skip


async def test_rollout_canary_and_rollback_on_the_cluster(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """A web endpoint becomes a Deployment with its Service, PDB and HPA; it routes to its pod
    once the pod is ready. A version beside it is a second Deployment at a fixed count; a 25 %
    canary, a crash of its pod (no longer routed, then back), a rollback (the canary's objects
    deleted), a second canary promoted (the old version's objects deleted, the HPA moves to the
    new one), then the endpoint deleted: every object gone."""
    client = deployer.client
    observed = deployer.state["fleet"].observe()
    created = await deployer.create(
        name="shop", source=str(model(tmp_path, "v1", "one")), replicas={"min": 1, "max": 3}
    )
    slug = created["slug"]
    assert created["status"] == "deploying"
    v1 = f"{slug}-v1"
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert cluster.applied(kind) == [v1], kind
    # Every write was a server-side apply by the deployer; nothing was refused.
    writes = [c for c in cluster.calls if c.verb not in ("list", "watch")]
    assert all(c.query["fieldManager"] == "cormorant-deployer" for c in writes)
    assert all(c.query["force"].lower() == "true" for c in writes)
    assert {c.status for c in writes} <= {200, 201}
    # The last apply (the reconcile loop re-applies the same objects every 0.5 s here).
    deployment = applied_bodies(cluster, "Deployment", v1)[-1]
    [worker] = deployment["spec"]["template"]["spec"]["containers"]
    assert worker["image"] == "images.test/cormorant:1"
    assert "replicas" not in deployment["spec"]  # the HPA's business

    [pod1] = await pods(cluster, v1, 1)
    assert await routed(deployer, slug) == {}
    ip1 = cluster.ready(pod1)
    endpoint = await deployer.wait_running(slug)
    assert endpoint["replicas"]["ready"] == 1
    await routes_to(deployer, slug, {f"http://{ip1}:8080": "1"})

    # A second version: its own Deployment, one pod, no HPA, no traffic.
    added = await client.post(
        f"/api/v1/endpoints/{slug}/versions", json={"source": str(model(tmp_path, "v2", "two"))}
    )
    assert added.status_code == 201, added.text
    v2 = f"{slug}-v2"
    assert cluster.applied("Deployment") == [v1, v2]
    assert cluster.applied("HorizontalPodAutoscaler") == [v1]
    assert applied_bodies(cluster, "Deployment", v2)[-1]["spec"]["replicas"] == 1
    [pod2] = await pods(cluster, v2, 1)
    ip2 = cluster.ready(pod2)
    both = {f"http://{ip1}:8080": "1", f"http://{ip2}:8080": "2"}
    await routes_to(deployer, slug, both)

    canary = await client.post(
        f"/api/v1/endpoints/{slug}/rollout", json={"version": "2", "percent": 25}
    )
    assert canary.status_code == 200, canary.text
    assert (await deployer.route(slug))["weights"] == {"1": 75, "2": 25}

    # The canary's container crashes: no longer routed, an event says why; back once ready.
    cluster.crash(pod2, exit_code=3)
    await routes_to(deployer, slug, {f"http://{ip1}:8080": "1"})
    events = (await deployer.get(slug))["events"]
    [crash] = [e for e in events if e["state"] == "crashed"]
    assert "exited with code 3" in crash["reason"]
    assert "CrashLoopBackOff" in crash["reason"]
    assert crash["version"] == "2"
    cluster.ready(pod2)
    await routes_to(deployer, slug, both)

    back = await client.post(f"/api/v1/endpoints/{slug}/rollback")
    assert back.status_code == 200, back.text
    assert back.json()["weights"] == {"1": 100}

    def v2_gone() -> bool:
        return v2 not in cluster.applied("Deployment") and not cluster.pods_of(v2)

    await eventually(v2_gone, what="v2's objects deleted")
    assert cluster.applied("Service") == [v1]
    await routes_to(deployer, slug, {f"http://{ip1}:8080": "1"})
    deletes = {c.path for c in cluster.calls if c.verb == "delete" and c.status == 200}
    assert f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{v2}" in deletes
    assert f"/api/v1/namespaces/{NAMESPACE}/services/{v2}" in deletes
    assert f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/{v2}" in deletes

    # A third version, promoted: it gets the HPA, v1's objects go once it retires.
    third = await client.post(
        f"/api/v1/endpoints/{slug}/versions", json={"source": str(model(tmp_path, "v3", "three"))}
    )
    assert third.status_code == 201, third.text
    v3 = f"{slug}-v3"
    [pod3] = await pods(cluster, v3, 1)
    ip3 = cluster.ready(pod3)
    await routes_to(deployer, slug, {f"http://{ip1}:8080": "1", f"http://{ip3}:8080": "3"})
    half = await client.post(
        f"/api/v1/endpoints/{slug}/rollout", json={"version": "3", "percent": 50}
    )
    assert half.json()["weights"] == {"1": 50, "3": 50}
    promoted = await client.post(f"/api/v1/endpoints/{slug}/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["weights"] == {"3": 100}
    await eventually(lambda: cluster.applied("Deployment") == [v3], what="v1 retired")
    assert cluster.applied("HorizontalPodAutoscaler") == [v3]
    assert "replicas" not in applied_bodies(cluster, "Deployment", v3)[-1]["spec"]
    await routes_to(deployer, slug, {f"http://{ip3}:8080": "3"})
    assert (await deployer.wait_running(slug))["version"] == "3"

    deleted = await client.delete(f"/api/v1/endpoints/{slug}")
    assert deleted.status_code == 200, deleted.text
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert cluster.applied(kind) == [], kind
    assert cluster.pods == {}

    # observe() reported the canary's replica as a local fleet reports a process's life.
    states: list[str] = []
    while states[-1:] != ["stopped"]:
        event = await asyncio.wait_for(anext(observed), timeout=10)
        if event.version == "2":
            states.append(event.state)
    await observed.aclose()
    assert states == ["starting", "ready", "crashed", "starting", "ready", "draining", "stopped"]


async def test_an_evicted_pod_is_a_killed_replica_replaced_by_a_new_one(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """Eviction: the replica is reported crashed (killed) and stopped, the Deployment's new
    pod is a new replica, routed once ready."""
    slug = (await deployer.create(name="ev", source=str(model(tmp_path, "v1", "one"))))["slug"]
    [first] = await pods(cluster, f"{slug}-v1", 1)
    cluster.ready(first)
    await deployer.wait_running(slug)
    [old] = (await deployer.route(slug))["replicas"]

    cluster.evict(first)
    [second] = await pods(cluster, f"{slug}-v1", 1)
    assert second != first
    await routes_to(deployer, slug, {})
    endpoint = await deployer.get(slug)
    [evicted] = [e for e in endpoint["events"] if e["state"] == "crashed"]
    assert evicted["replica_id"] == old["id"]
    assert evicted["cause"] == "killed"
    assert "evicted" in evicted["reason"]
    assert "low on resource" in evicted["reason"]
    ip = cluster.ready(second)
    await routes_to(deployer, slug, {f"http://{ip}:8080": "1"})
    [new] = (await deployer.route(slug))["replicas"]
    assert new["id"] != old["id"]


async def test_a_batch_endpoint_rests_at_zero_and_scales_on_demand(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """A batch endpoint's Deployment is at 0 replicas; the batch service's demand raises it,
    and it goes back to 0 once the demand lapses."""
    created = await deployer.create(
        name="nightly", kind="batch", source=str(model(tmp_path, "v1", "one")),
        replicas={"max": 2},
    )  # fmt: skip
    slug = created["slug"]
    name = f"{slug}-v1"
    assert applied_bodies(cluster, "Deployment", name)[-1]["spec"]["replicas"] == 0
    assert cluster.applied("HorizontalPodAutoscaler") == []
    assert cluster.pods_of(name) == []
    assert (await deployer.get(slug))["status"] == "idle"

    demand = await deployer.client.put(
        f"/internal/endpoints/{slug}/demand", json={"replicas": 5, "ttl_s": 1.5}
    )
    assert demand.status_code == 200, demand.text
    assert demand.json()["desired"] == 2  # clamped to replicas.max
    assert applied_bodies(cluster, "Deployment", name)[-1]["spec"]["replicas"] == 2
    ips = [cluster.ready(pod) for pod in await pods(cluster, name, 2)]
    await routes_to(deployer, slug, {f"http://{ip}:8080": "1" for ip in ips})

    await pods(cluster, name, 0)
    assert applied_bodies(cluster, "Deployment", name)[-1]["spec"]["replicas"] == 0
    await routes_to(deployer, slug, {})
    await deployer.wait_for(slug, lambda e: e["status"] == "idle", what="idle again")


async def test_manifests_route_prints_what_the_fleet_applied(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """``GET /api/v1/endpoints/{slug}/manifests`` renders exactly the objects the fleet
    applied; ``GET /api/v1/manifests`` every endpoint's; an unknown slug is a 404 saying
    where to look."""
    slug = (await deployer.create(name="mf", source=str(model(tmp_path, "v1", "one"))))["slug"]
    other = (await deployer.create(name="other", source=str(model(tmp_path, "o", "x"))))["slug"]
    answer = await deployer.client.get(f"/api/v1/endpoints/{slug}/manifests")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["endpoints"] == [slug]
    assert list(yaml.safe_load_all(document["yaml"])) == document["objects"]
    for obj in document["objects"]:
        sent = applied_bodies(cluster, obj["kind"], obj["metadata"]["name"])
        assert sent[-1] == obj, obj["kind"]

    everything = (await deployer.client.get("/api/v1/manifests")).json()
    assert everything["endpoints"] == sorted([slug, other])
    assert len(everything["objects"]) == 2 * len(document["objects"])

    missing = await deployer.client.get("/api/v1/endpoints/nope/manifests")
    assert missing.status_code == 404
    assert "GET /api/v1/endpoints" in missing.json()["error"]["message"]


async def topics(kafka_bootstrap: str) -> tuple[str, str]:
    """A fresh input topic (3 partitions) and output topic on the real broker."""
    tag = uuid.uuid4().hex[:8]
    source, output = f"in-{tag}", f"out-{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(source, 3, 1), NewTopic(output, 1, 1)])
    finally:
        await admin.close()
    return source, output


def stream_model(tmp_path: Path, name: str, answer: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "predict.py").write_text(f"def predict(value):\n    return {answer!r}\n")
    return directory


async def create_stream(
    deployer: DeployerHarness, tmp_path: Path, kafka_bootstrap: str, name: str, minimum: int
) -> tuple[dict[str, Any], str]:
    """A stream endpoint reading a fresh topic; its JSON and its input topic."""
    source, output = await topics(kafka_bootstrap)
    created = await deployer.create(
        name=name, kind="stream", source=str(stream_model(tmp_path, f"{name}-v1", "one")),
        replicas={"min": minimum, "max": 3},
        kafka={"bootstrap_servers": kafka_bootstrap, "input_topics": [source],
               "output_topic": output},
    )  # fmt: skip
    return created, source


async def test_a_stream_endpoint_is_kafka_bridges_scaled_by_keda(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A stream endpoint (topics checked against a real broker) becomes a kafka-bridge
    Deployment and a KEDA ScaledObject (a custom object) capped at the input partitions; a
    new version is not started before its rollout (its pods would take partitions);
    deleting the endpoint deletes both."""
    created, source = await create_stream(deployer, tmp_path, kafka_bootstrap, "clicks", 1)
    slug = created["slug"]
    name = f"{slug}-v1"
    assert cluster.applied("Deployment") == [name]
    assert cluster.applied("ScaledObject") == [name]
    assert cluster.applied("Service") == []
    assert cluster.applied("HorizontalPodAutoscaler") == []
    scaled = applied_bodies(cluster, "ScaledObject", name)[-1]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 3)
    assert [t["metadata"]["topic"] for t in scaled["spec"]["triggers"]] == [source]
    [bridge] = applied_bodies(cluster, "Deployment", name)[-1]["spec"]["template"]["spec"][
        "containers"
    ]
    assert bridge["name"] == "kafka-bridge"
    assert f"--input-topic {source} --output-topic" in " ".join(bridge["command"])

    [pod] = await pods(cluster, name, 1)
    cluster.ready(pod)
    await deployer.wait_running(slug)

    added = await deployer.client.post(
        f"/api/v1/endpoints/{slug}/versions",
        json={"source": str(stream_model(tmp_path, "clicks-v2", "two"))},
    )
    assert added.status_code == 201, added.text
    assert cluster.applied("Deployment") == [name]

    deleted = await deployer.client.delete(f"/api/v1/endpoints/{slug}")
    assert deleted.status_code == 200, deleted.text
    assert cluster.applied("ScaledObject") == []
    assert cluster.applied("Deployment") == []
    custom = f"/apis/keda.sh/v1alpha1/namespaces/{NAMESPACE}/scaledobjects/{name}"
    *applies, last = [c.verb for c in cluster.calls if c.path == custom]
    assert set(applies) == {"apply"}
    assert last == "delete"


async def test_a_refused_apply_is_the_endpoints_failure_until_the_reconcile_succeeds(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """The API refuses the HPA (RBAC): the endpoint is created (its token shown) and failed
    with a reason naming the object and what to check; once allowed, the reconcile applies it
    and the endpoint runs."""
    cluster.refusals["HorizontalPodAutoscaler"] = 403
    created = await deployer.create(name="rbac", source=str(model(tmp_path, "v1", "one")))
    assert created["token"]
    slug = created["slug"]
    failed = await deployer.wait_for(slug, lambda e: e["status"] == "failed", what="failed")
    assert "HorizontalPodAutoscaler" in failed["reason"]
    assert "forbidden" in failed["reason"]
    assert "RBAC" in failed["reason"]

    del cluster.refusals["HorizontalPodAutoscaler"]
    await eventually(lambda: cluster.applied("HorizontalPodAutoscaler") == [f"{slug}-v1"],
                     what="the HPA applied by the reconcile")  # fmt: skip
    [pod] = await pods(cluster, f"{slug}-v1", 1)
    cluster.ready(pod)
    assert (await deployer.wait_running(slug))["reason"] is None


async def test_pods_deleted_while_the_watch_was_down_are_found_on_the_next_listing(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """The API server goes away (watch ended, lists failing); a pod is deleted meanwhile. When
    it is back the fleet lists again: the gone pod's replica stops, its replacement is a new
    replica."""
    slug = (await deployer.create(name="dark", source=str(model(tmp_path, "v1", "one"))))["slug"]
    [first] = await pods(cluster, f"{slug}-v1", 1)
    ip = cluster.ready(first)
    await routes_to(deployer, slug, {f"http://{ip}:8080": "1"})
    [old] = (await deployer.route(slug))["replicas"]

    cluster.go_dark()
    cluster.delete_pod(first)
    [second] = await pods(cluster, f"{slug}-v1", 1)
    cluster.come_back()
    await routes_to(deployer, slug, {})
    stopped = await deployer.wait_for(
        slug,
        lambda e: any(
            ev["replica_id"] == old["id"] and ev["state"] == "stopped" for ev in e["events"]
        ),
        what="the deleted pod's replica stopped",
    )
    assert stopped["status"] == "deploying"
    ip2 = cluster.ready(second)
    await routes_to(deployer, slug, {f"http://{ip2}:8080": "1"})


async def test_a_restarted_deployer_finds_the_serving_pods_again(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """Pods keep serving while the deployer restarts; its first listing routes to them again
    without touching the Deployment's count, and a container restart from before is not
    reported again as a crash."""
    slug = (await deployer.create(name="keep", source=str(model(tmp_path, "v1", "one"))))["slug"]
    [pod] = await pods(cluster, f"{slug}-v1", 1)
    ip = cluster.ready(pod)
    await routes_to(deployer, slug, {f"http://{ip}:8080": "1"})
    cluster.crash(pod)
    await routes_to(deployer, slug, {})
    cluster.ready(pod)
    await routes_to(deployer, slug, {f"http://{ip}:8080": "1"})

    await deployer.restart()
    fleet = deployer.state["fleet"]
    assert isinstance(fleet, KubernetesFleet)
    await eventually(fleet.watching.is_set, what="the pod watch")
    await routes_to(deployer, slug, {f"http://{ip}:8080": "1"})
    assert cluster.pods_of(f"{slug}-v1") == [pod]
    endpoint = await deployer.wait_running(slug)
    assert endpoint["replicas"]["ready"] == 1
    assert [e["state"] for e in endpoint["events"]] == ["starting", "ready"]
    assert endpoint["restarts"] == 1


async def test_a_promoted_canary_keeps_its_pods_while_its_hpa_takes_over(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """Promotion moves the replica count from the deployer to the new version's HPA: the
    count is handed over first (server-side apply by another field manager), so the apply
    that leaves it out does not reset it to 1 and stop a serving pod."""
    slug = (
        await deployer.create(
            name="handover", source=str(model(tmp_path, "v1", "one")),
            replicas={"min": 2, "max": 4},
        )
    )["slug"]  # fmt: skip
    for pod in await pods(cluster, f"{slug}-v1", 2):
        cluster.ready(pod)
    await deployer.wait_running(slug, ready=2)
    added = await deployer.client.post(
        f"/api/v1/endpoints/{slug}/versions", json={"source": str(model(tmp_path, "v2", "two"))}
    )
    assert added.status_code == 201, added.text
    v2 = f"{slug}-v2"
    canary_pods = await pods(cluster, v2, 2)
    for pod in canary_pods:
        cluster.ready(pod)
    await eventually(lambda: len(cluster.pods_of(v2)) == 2, what="v2's pods")
    rolled = await deployer.client.post(
        f"/api/v1/endpoints/{slug}/rollout", json={"version": "2", "percent": 50}
    )
    assert rolled.status_code == 200, rolled.text

    promoted = await deployer.client.post(f"/api/v1/endpoints/{slug}/promote")
    assert promoted.status_code == 200, promoted.text
    await eventually(lambda: cluster.applied("Deployment") == [v2], what="v1 retired")
    assert cluster.applied("HorizontalPodAutoscaler") == [v2]
    assert cluster.pods_of(v2) == canary_pods
    assert cluster.objects[("Deployment", v2)]["spec"]["replicas"] == 2
    assert cluster.replica_owners[v2] == "cormorant-handover"
    handovers = [c for c in cluster.calls if c.query.get("fieldManager") == "cormorant-handover"]
    assert [c.body["spec"] for c in handovers if c.body] == [{"replicas": 2}]


async def test_a_pod_crash_looping_before_it_serves_fails_the_endpoint_with_why(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """A container that keeps exiting before its first ready probe marks the endpoint failed
    after ``max_start_failures`` crashes, with the exit code; once it serves, it runs."""
    slug = (await deployer.create(name="loop", source=str(model(tmp_path, "v1", "one"))))["slug"]
    [pod] = await pods(cluster, f"{slug}-v1", 1)
    for _ in range(deployer.settings.max_start_failures):
        cluster.crash(pod, exit_code=2, reason="Error")
    failed = await deployer.wait_for(slug, lambda e: e["status"] == "failed", what="failed")
    assert "crashed 3 times in a row before becoming ready" in failed["reason"]
    assert "exited with code 2" in failed["reason"]
    assert failed["restarts"] == 3
    cluster.ready(pod)
    running = await deployer.wait_running(slug)
    assert running["reason"] is None


async def test_a_failing_code_fetch_is_reported_like_a_crash(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path
) -> None:
    """The init container cannot fetch the version's archive (e.g. an archives store the pods
    cannot reach): the endpoint fails with a reason naming the init container."""
    slug = (await deployer.create(name="nofetch", source=str(model(tmp_path, "v1", "a"))))["slug"]
    [pod] = await pods(cluster, f"{slug}-v1", 1)
    for _ in range(deployer.settings.max_start_failures):
        cluster.fail_fetch(pod)
    failed = await deployer.wait_for(slug, lambda e: e["status"] == "failed", what="failed")
    assert "exited with code 1 (Error) in the init container fetch-code" in failed["reason"]
    assert await routed(deployer, slug) == {}


def deletes_of(cluster: RecordedCluster, name: str) -> list[int]:
    """Positions in the calls of the deletions of ``name``'s objects that deleted one."""
    return [
        i for i, c in enumerate(cluster.calls)
        if c.verb == "delete" and c.status == 200 and c.path.endswith(f"/{name}")
    ]  # fmt: skip


async def test_a_stream_version_takes_the_group_from_the_old_bridge_deployment(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A rollout of a stream endpoint's new version on the cluster: its bridge Deployment is
    applied at the old version's pod count while the old pods keep consuming; the old
    version's objects are deleted only once every new pod is ready; the new version then
    serves the whole stream (the count handed over to KEDA, its ScaledObject applied) and the events
    show the new pods starting and ready, the old ones draining and stopped."""
    created, _ = await create_stream(deployer, tmp_path, kafka_bootstrap, "swap", 2)
    slug = created["slug"]
    v1, v2 = f"{slug}-v1", f"{slug}-v2"
    old_pods = await pods(cluster, v1, 2)
    for pod in old_pods:
        cluster.ready(pod)
    await deployer.wait_running(slug, ready=2)
    added = await deployer.client.post(
        f"/api/v1/endpoints/{slug}/versions",
        json={"source": str(stream_model(tmp_path, "swap-v2", "two"))},
    )
    assert added.status_code == 201, added.text

    rollout = asyncio.create_task(
        deployer.client.post(
            f"/api/v1/endpoints/{slug}/rollout", json={"version": "2", "percent": 100}
        )
    )
    new_pods = await pods(cluster, v2, 2)
    assert applied_bodies(cluster, "Deployment", v2)[0]["spec"]["replicas"] == 2
    # No ScaledObject while it warms up: KEDA would change its count meanwhile.
    assert cluster.applied("ScaledObject") == [v1]
    cluster.ready(new_pods[0])
    # One of two ready: the old version keeps every object and pod.
    await deployer.wait_for(
        slug,
        lambda e: any(ev["version"] == "2" and ev["state"] == "ready" for ev in e["events"]),
        what="v2's first pod ready",
    )
    assert not rollout.done()
    assert cluster.applied("Deployment") == [v1, v2]
    assert cluster.pods_of(v1) == old_pods
    assert deletes_of(cluster, v1) == []
    before = len(cluster.calls)
    cluster.ready(new_pods[1])

    answer = await rollout
    assert answer.status_code == 200, answer.text
    assert answer.json()["weights"] == {"2": 100}
    assert cluster.applied("Deployment") == [v2]
    assert cluster.applied("ScaledObject") == [v2]
    assert cluster.pods_of(v2) == new_pods
    assert cluster.pods_of(v1) == []
    deleted = deletes_of(cluster, v1)
    assert deleted, "v1's objects deleted"
    assert min(deleted) >= before, "v1's objects deleted only after v2's last pod got ready"
    # The count the swap applied went to the handover manager: KEDA scales it from here.
    assert cluster.replica_owners[v2] == "cormorant-handover"
    assert cluster.objects[("Deployment", v2)]["spec"]["replicas"] == 2

    endpoint = await deployer.wait_running(slug, ready=2)
    assert endpoint["version"] == "2"
    states = [(e["version"], e["state"]) for e in endpoint["events"]]
    assert states.count(("2", "ready")) == 2
    assert states.count(("1", "draining")) == 2
    assert states.count(("1", "stopped")) == 2
    last_ready = max(i for i, s in enumerate(states) if s == ("2", "ready"))
    first_draining = min(i for i, s in enumerate(states) if s == ("1", "draining"))
    assert last_ready < first_draining


async def test_a_swap_whose_pods_never_get_ready_leaves_the_old_version_consuming(
    deployer_settings: DeployerSettings,
    cluster: RecordedCluster,
    tmp_path: Path,
    kafka_bootstrap: str,
) -> None:
    """The new version's pods never get ready within the start timeout: the rollout answers
    409 naming the version, its Deployment and the pod still waiting; the new version's
    objects are deleted, the old version's untouched and still the endpoint's."""
    async with cluster_deployer(
        deployer_settings, cluster, tmp_path, start_timeout_s=3.0
    ) as deployer:
        created, _ = await create_stream(deployer, tmp_path, kafka_bootstrap, "stuck", 1)
        slug = created["slug"]
        v1, v2 = f"{slug}-v1", f"{slug}-v2"
        [old] = await pods(cluster, v1, 1)
        cluster.ready(old)
        await deployer.wait_running(slug)
        added = await deployer.client.post(
            f"/api/v1/endpoints/{slug}/versions",
            json={"source": str(stream_model(tmp_path, "stuck-v2", "two"))},
        )
        assert added.status_code == 201, added.text

        refused = await deployer.client.post(
            f"/api/v1/endpoints/{slug}/rollout", json={"version": "2", "percent": 100}
        )
        assert refused.status_code == 409, refused.text
        message = refused.json()["error"]["message"]
        assert "version 2" in message
        assert "not ready within 3 s" in message
        assert f"Deployment {v2}: 0 of 1 pod(s) ready" in message
        assert "ContainerCreating" in message
        assert "version 1 keeps consuming" in message

        assert cluster.applied("Deployment") == [v1]
        assert cluster.applied("ScaledObject") == [v1]
        assert cluster.pods_of(v1) == [old]
        assert cluster.pods_of(v2) == []
        assert deletes_of(cluster, v1) == []
        endpoint = await deployer.wait_running(slug)
        assert endpoint["version"] == "1"
        traffic = await deployer.client.get(f"/api/v1/endpoints/{slug}/traffic")
        assert traffic.json()["weights"] == {"1": 100}


async def test_a_swap_refused_by_the_api_or_crash_looping_leaves_the_old_version_consuming(
    deployer: DeployerHarness, cluster: RecordedCluster, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The API refuses the new version's PodDisruptionBudget (RBAC): 409 naming it, the objects
    already applied for the new version deleted. Allowed again, the new version's pod
    crash-loops before it serves: 409 with the exit code once it has crashed
    ``max_start_failures`` times, its objects deleted; version 1 still serves throughout."""
    created, _ = await create_stream(deployer, tmp_path, kafka_bootstrap, "loopy", 1)
    slug = created["slug"]
    v1, v2 = f"{slug}-v1", f"{slug}-v2"
    [old] = await pods(cluster, v1, 1)
    cluster.ready(old)
    await deployer.wait_running(slug)
    added = await deployer.client.post(
        f"/api/v1/endpoints/{slug}/versions",
        json={"source": str(stream_model(tmp_path, "loopy-v2", "two"))},
    )
    assert added.status_code == 201, added.text
    rollout = {"version": "2", "percent": 100}

    cluster.refusals["PodDisruptionBudget"] = 403
    refused = await deployer.client.post(f"/api/v1/endpoints/{slug}/rollout", json=rollout)
    assert refused.status_code == 409, refused.text
    message = refused.json()["error"]["message"]
    assert f"apply PodDisruptionBudget {v2}" in message
    assert "RBAC" in message
    assert "version 1 keeps consuming" in message
    del cluster.refusals["PodDisruptionBudget"]
    await eventually(lambda: cluster.applied("Deployment") == [v1], what="v2 withdrawn")
    assert cluster.pods_of(v1) == [old]

    attempt = asyncio.create_task(
        deployer.client.post(f"/api/v1/endpoints/{slug}/rollout", json=rollout)
    )
    [new] = await pods(cluster, v2, 1)
    for _ in range(deployer.settings.max_start_failures):
        cluster.crash(new, exit_code=4)
    crashed = await attempt
    assert crashed.status_code == 409, crashed.text
    message = crashed.json()["error"]["message"]
    assert "version 2" in message
    assert "did not start" in message
    assert "exited with code 4" in message
    assert f"{new} CrashLoopBackOff" in message
    assert "version 1 keeps consuming" in message
    assert cluster.applied("Deployment") == [v1]
    assert cluster.applied("ScaledObject") == [v1]
    assert cluster.pods_of(v1) == [old]
    assert deletes_of(cluster, v1) == []
    endpoint = await deployer.wait_running(slug)
    assert endpoint["version"] == "1"
