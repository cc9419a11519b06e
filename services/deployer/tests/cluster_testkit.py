"""A recorded Kubernetes API server for tests: it stands in for a cluster.

No Kubernetes API server can run on the machines the tests run on, so this real HTTP server
(aiohttp, on a free port of 127.0.0.1) answers the calls the ``KubernetesFleet`` makes through
the real kubernetes-asyncio client: server-side apply (``PATCH`` with
``application/apply-patch+yaml`` and a ``fieldManager``), ``DELETE``, the pod ``LIST`` and the
pod ``WATCH``. It checks each call's verb, path, query and body (a wrong one is answered with
the API server's error status and recorded), keeps the objects, and plays a minimal Deployment
controller: a Deployment's pods follow its ``replicas`` (or its HPA's ``minReplicas``, or its
``ScaledObject``'s ``minReplicaCount``). Tests then replay what a kubelet would report: a pod
becoming ready, its container crashing, the pod being evicted.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

TOKEN = "recorded-cluster-token"
APPLY = "application/apply-patch+yaml"

# Plural resource of each kind the fleet writes, by (API group/version, plural).
RESOURCES = {
    ("apps/v1", "deployments"): "Deployment",
    ("v1", "services"): "Service",
    ("v1", "secrets"): "Secret",
    ("policy/v1", "poddisruptionbudgets"): "PodDisruptionBudget",
    ("autoscaling/v2", "horizontalpodautoscalers"): "HorizontalPodAutoscaler",
    ("keda.sh/v1alpha1", "scaledobjects"): "ScaledObject",
}


@dataclass(frozen=True, slots=True)
class Call:
    """One request the server received, and its answer's status."""

    verb: str
    """``apply``, ``delete``, ``list``, ``watch`` or the HTTP method of anything else."""
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None
    status: int


@dataclass(eq=False, slots=True)
class _Watcher:
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip
    return web.json_response(body, status=code)


class RecordedCluster:
    """The server, its objects and pods, and what it was asked."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.calls: list[Call] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        """Every object by (kind, name)."""
        self.pods: dict[str, dict[str, Any]] = {}
        self._version = itertools.count(1)
        self._ips = itertools.count(10)
        self._history: list[tuple[int, str, dict[str, Any]]] = []
        self._watchers: set[_Watcher] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.refusals: dict[str, int] = {}
        """Kinds whose apply is refused, with the status (e.g. 403: RBAC)."""
        self.dark = False
        """The pod list and watch answer 503 (an API server restarting)."""
        self.replica_owners: dict[str, str] = {}
        """The field manager of each Deployment's ``spec.replicas``."""

    # Serving

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """End the watches and stop serving."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig for this server (bearer-token user) to ``path``."""
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "recorded", "cluster": {"server": self.url}}],
            "users": [{"name": "deployer", "user": {"token": TOKEN}}],
            "contexts": [
                {"name": "recorded", "context": {"cluster": "recorded", "user": "deployer"}}
            ],
            "current-context": "recorded",
        }
        path.write_text(yaml.safe_dump(document))
        return path

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] | None = None
        if request.can_read_body:
            text = await request.text()
            body = json.loads(text) if text.strip().startswith("{") else yaml.safe_load(text)
        query = dict(request.query)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._record(request, "auth", query, body, _status(401, "Unauthorized",
                                                                    "no bearer token"))  # fmt: skip
        parts = request.path.strip("/").split("/")
        # /api/v1/namespaces/NS/PLURAL[/NAME] or /apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME]
        if parts[:1] == ["api"]:
            group_version, rest = parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) > 2:
            group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return self._record(request, request.method, query, body,
                                _status(404, "NotFound", f"no API at {request.path}"))  # fmt: skip
        if len(rest) < 3 or rest[0] != "namespaces" or rest[1] != self.namespace:
            answer = _status(403, "Forbidden", f"{request.path}: outside namespace "
                             f"{self.namespace!r}")  # fmt: skip
            return self._record(request, request.method, query, body, answer)
        plural, name = rest[2], rest[3] if len(rest) > 3 else None
        if (group_version, plural) == ("v1", "pods") and request.method == "GET" and not name:
            if self.dark:
                answer = _status(503, "ServiceUnavailable", "the API server is restarting")
                return self._record(request, "list", query, body, answer)
            if query.get("watch") in ("true", "1", "True"):
                return await self._watch(request, query)
            return self._record(request, "list", query, body, self._list(query))
        kind = RESOURCES.get((group_version, plural))
        if kind is None or name is None:
            answer = _status(404, "NotFound", f"the fleet has no business with {request.path}")
            return self._record(request, request.method, query, body, answer)
        if request.method == "PATCH":
            answer = self._apply(kind, group_version, name, request, query, body)
            return self._record(request, "apply", query, body, answer)
        if request.method == "DELETE":
            return self._record(request, "delete", query, body, self._delete(kind, name))
        answer = _status(405, "MethodNotAllowed", f"{request.method} {request.path}")
        return self._record(request, request.method, query, body, answer)

    def _record(
        self, request: web.Request, verb: str, query: dict[str, str],
        body: dict[str, Any] | None, answer: web.StreamResponse,
    ) -> web.StreamResponse:  # fmt: skip
        self.calls.append(Call(verb, request.path, query, body, answer.status))
        return answer

    # The API

    def _apply(
        self, kind: str, group_version: str, name: str, request: web.Request,
        query: dict[str, str], body: dict[str, Any] | None,
    ) -> web.Response:  # fmt: skip
        if kind in self.refusals:
            code = self.refusals[kind]
            message = (f'{kind.lower()}s "{name}" is forbidden: User "deployer" cannot '
                       f'patch resource in namespace "{self.namespace}"')  # fmt: skip
            return _status(code, "Forbidden", message)
        if request.content_type != APPLY:
            return _status(415, "UnsupportedMediaType",
                           f"expected {APPLY}, got {request.content_type}")  # fmt: skip
        if not query.get("fieldManager"):
            return _status(422, "Invalid", "fieldManager is required for apply patch")
        if body is None or body.get("kind") != kind or body.get("apiVersion") != group_version:
            return _status(400, "BadRequest", f"the body is not a {group_version} {kind}")
        metadata = body.get("metadata") or {}
        if metadata.get("name") != name or metadata.get("namespace", self.namespace) != (
            self.namespace
        ):
            return _status(400, "BadRequest", "the body's name or namespace is not the path's")
        key = (kind, name)
        created = key not in self.objects
        manager = query["fieldManager"]
        if kind == "Deployment":
            if not created and "template" not in (body.get("spec") or {}):
                return self._apply_replicas(name, manager, body)
            body = self._own_replicas(name, manager, body)
        stored = copy.deepcopy(body)
        stored["metadata"]["uid"] = (
            (self.objects.get(key) or {}).get("metadata", {}).get("uid", str(uuid.uuid4()))
        )
        stored["metadata"]["resourceVersion"] = str(next(self._version))
        stored["metadata"].setdefault("namespace", self.namespace)
        self.objects[key] = stored
        self._control()
        return web.json_response(stored, status=201 if created else 200)

    def _own_replicas(self, name: str, manager: str, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of ``spec.replicas``: set, it is the manager's; left out by the
        manager that owned it, it is removed and defaults to 1; owned by another manager (a
        handover, an HPA), it keeps its value."""
        previous = (self.objects.get(("Deployment", name)) or {}).get("spec", {})
        owner = self.replica_owners.get(name)
        if "replicas" in body["spec"]:
            self.replica_owners[name] = manager
        elif "replicas" in previous and owner == manager:
            body = copy.deepcopy(body)
            body["spec"]["replicas"] = 1
            self.replica_owners.pop(name)
        elif "replicas" in previous:
            body = copy.deepcopy(body)
            body["spec"]["replicas"] = previous["replicas"]
        return body

    def _apply_replicas(self, name: str, manager: str, body: dict[str, Any]) -> web.Response:
        """A partial apply of an existing Deployment: only its ``spec.replicas`` (a handover
        of the field to another manager)."""
        stored = self.objects[("Deployment", name)]
        if "replicas" in body["spec"]:
            stored["spec"]["replicas"] = body["spec"]["replicas"]
            self.replica_owners[name] = manager
        stored["metadata"]["resourceVersion"] = str(next(self._version))
        self._control()
        return web.json_response(stored)

    def _delete(self, kind: str, name: str) -> web.Response:
        found = self.objects.pop((kind, name), None)
        if found is None:
            return _status(404, "NotFound", f'{kind.lower()}s "{name}" not found')
        if kind == "Deployment":
            self.replica_owners.pop(name, None)
            for pod in [p for p in self.pods.values() if self._owner(p) == name]:
                self._terminate(pod)
        self._control()
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success",
                                  "details": {"name": name, "kind": kind}})  # fmt: skip

    def _list(self, query: dict[str, str]) -> web.Response:
        items = [p for p in self.pods.values() if self._selected(p, query)]
        return web.json_response(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._current_version())},
                "items": items,
            }
        )

    async def _watch(self, request: web.Request, query: dict[str, str]) -> web.StreamResponse:
        since = int(query.get("resourceVersion") or 0)
        self.calls.append(Call("watch", request.path, query, None, 200))
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        watcher = _Watcher()
        for version, kind, pod in self._history:
            if version > since:
                watcher.queue.put_nowait({"type": kind, "object": pod})
        self._watchers.add(watcher)
        try:
            while (event := await watcher.queue.get()) is not None:
                if self._selected(event["object"], query):
                    await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(watcher)
        return response

    def _selected(self, pod: dict[str, Any], query: dict[str, str]) -> bool:
        labels = pod["metadata"].get("labels") or {}
        wanted = [term.split("=", 1) for term in query.get("labelSelector", "").split(",") if term]
        return all(labels.get(k) == v for k, v in wanted)

    # The controller and the kubelet

    def _current_version(self) -> int:
        return self._history[-1][0] if self._history else 0

    def _emit(self, kind: str, pod: dict[str, Any]) -> None:
        version = next(self._version)
        pod["metadata"]["resourceVersion"] = str(version)
        snapshot = copy.deepcopy(pod)
        self._history.append((version, kind, snapshot))
        for watcher in self._watchers:
            watcher.queue.put_nowait({"type": kind, "object": snapshot})

    def _owner(self, pod: dict[str, Any]) -> str:
        return str(pod["metadata"]["annotations"]["recorded/deployment"])

    def desired(self, deployment: str) -> int:
        """The pods the Deployment wants: its count, or its autoscaler's minimum."""
        spec = self.objects[("Deployment", deployment)]["spec"]
        if "replicas" in spec:
            return int(spec["replicas"])
        hpa = self.objects.get(("HorizontalPodAutoscaler", deployment))
        if hpa is not None:
            return int(hpa["spec"].get("minReplicas", 1))
        scaled = self.objects.get(("ScaledObject", deployment))
        if scaled is not None:
            return int(scaled["spec"].get("minReplicaCount", 0))
        return 1

    def _control(self) -> None:
        for (kind, name), deployment in list(self.objects.items()):
            if kind != "Deployment":
                continue
            mine = [p for p in self.pods.values() if self._owner(p) == name
                    and not p["metadata"].get("deletionTimestamp")]  # fmt: skip
            missing = self.desired(name) - len(mine)
            for _ in range(missing):
                self._create_pod(name, deployment)
            for pod in sorted(mine, key=lambda p: p["metadata"]["creationTimestamp"])[
                len(mine) + min(missing, 0) :
            ]:
                self._terminate(pod)

    def _create_pod(self, deployment: str, spec: dict[str, Any]) -> None:
        template = spec["spec"]["template"]
        uid = str(uuid.uuid4())
        name = f"{deployment}-{uid[:5]}"
        container = template["spec"]["containers"][0]
        pod = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "uid": uid,
                "labels": dict(template["metadata"]["labels"]),
                "annotations": {"recorded/deployment": deployment},
                "creationTimestamp": datetime.now(UTC).isoformat(),
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {
                "phase": "Pending",
                "podIP": f"10.42.0.{next(self._ips)}",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "ContainerCreating"}},
                    }
                ],
            },
        }
        self.pods[name] = pod
        self._emit("ADDED", pod)

    def _terminate(self, pod: dict[str, Any]) -> None:
        pod["metadata"]["deletionTimestamp"] = datetime.now(UTC).isoformat()
        self._set_ready(pod, False)
        self._emit("MODIFIED", pod)
        self.pods.pop(pod["metadata"]["name"], None)
        self._emit("DELETED", pod)

    def _set_ready(self, pod: dict[str, Any], ready: bool) -> None:
        pod["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        pod["status"]["containerStatuses"][0]["ready"] = ready

    # What tests replay

    def pods_of(self, deployment: str) -> list[str]:
        """Names of the Deployment's live pods, oldest first."""
        mine = [p for p in self.pods.values() if self._owner(p) == deployment]
        return [p["metadata"]["name"] for p in
                sorted(mine, key=lambda p: p["metadata"]["creationTimestamp"])]  # fmt: skip

    def ready(self, pod_name: str) -> str:
        """The pod's container runs and its readiness probe passes; its IP."""
        pod = self.pods[pod_name]
        pod["status"]["phase"] = "Running"
        pod["status"]["containerStatuses"][0]["state"] = {"running": {}}
        self._set_ready(pod, True)
        self._emit("MODIFIED", pod)
        return str(pod["status"]["podIP"])

    def crash(self, pod_name: str, *, exit_code: int = 1, reason: str = "Error") -> None:
        """The pod's container exits; the kubelet restarts it with back-off."""
        pod = self.pods[pod_name]
        status = pod["status"]["containerStatuses"][0]
        status["restartCount"] += 1
        status["lastState"] = {"terminated": {"exitCode": exit_code, "reason": reason}}
        status["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        self._set_ready(pod, False)
        self._emit("MODIFIED", pod)

    def fail_fetch(self, pod_name: str, *, exit_code: int = 1) -> None:
        """The pod's init container (fetching the code) exits; the kubelet retries it."""
        pod = self.pods[pod_name]
        init = pod["spec"]["initContainers"][0]
        statuses = pod["status"].setdefault(
            "initContainerStatuses",
            [
                {
                    "name": init["name"],
                    "image": init["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                }
            ],
        )
        statuses[0]["restartCount"] += 1
        statuses[0]["lastState"] = {"terminated": {"exitCode": exit_code, "reason": "Error"}}
        statuses[0]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "PodInitializing"}}
        self._emit("MODIFIED", pod)

    def evict(self, pod_name: str, message: str = "The node was low on resource: memory.") -> None:
        """The kubelet evicts the pod; the Deployment starts another."""
        pod = self.pods[pod_name]
        pod["status"].update(phase="Failed", reason="Evicted", message=message)
        self._set_ready(pod, False)
        self._emit("MODIFIED", pod)
        self.pods.pop(pod_name)
        self._emit("DELETED", pod)
        self._control()

    def go_dark(self) -> None:
        """End every watch; pod lists and watches fail until ``come_back``."""
        self.dark = True
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)

    def come_back(self) -> None:
        """Answer pod lists and watches again."""
        self.dark = False

    def delete_pod(self, pod_name: str) -> None:
        """Someone deletes the pod (``kubectl delete pod``); the Deployment starts another."""
        self._terminate(self.pods[pod_name])
        self._control()

    def applied(self, kind: str) -> list[str]:
        """Names of the objects of ``kind`` there are now."""
        return sorted(name for k, name in self.objects if k == kind)
