"""What a pod's JSON says about its replica: the pure half of the pod watch.

A pod of a version's Deployment is one replica. Ready (its ``Ready`` condition) is a ready
replica at ``http://<pod IP>:<port>``; a container restart (``restartCount`` up, often in
``CrashLoopBackOff``) is a crash; a pod being deleted is a draining replica, a deleted one a
stopped replica; an evicted pod is a replica killed under it (the Deployment starts another pod,
which is a new replica).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cormorant.fleet.kubernetes.manifests import ENDPOINT_LABEL, VERSION_LABEL


@dataclass(frozen=True, slots=True)
class PodView:
    """One pod as the fleet reads it."""

    uid: str
    name: str
    endpoint: str
    version: str
    ip: str | None
    ready: bool
    restarts: int
    """Restarts of its replica container."""
    crash: str | None
    """Why the container last ended (``exited with code 1 (Error)``), when it did."""
    waiting: str | None
    """Why the container is not running (``CrashLoopBackOff``, ``ContainerCreating``)."""
    terminating: bool
    """Its deletion has begun (scale-down, rollout, drain)."""
    gone: bool
    """Deleted: the watch said so."""
    evicted: str | None
    """The kubelet's eviction message, when it was evicted."""


def pod_view(event_type: str, pod: dict[str, Any]) -> PodView | None:
    """The view of ``pod`` after a watch event of ``event_type``; None for a pod that is not a
    replica (no endpoint or version label)."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    endpoint, version = labels.get(ENDPOINT_LABEL), labels.get(VERSION_LABEL)
    if not endpoint or not version or not metadata.get("uid"):
        return None
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    container = _replica_container(status.get("containerStatuses") or []) or {}
    # The init container fetching the code crashes like the replica would (a missing archive).
    fetch: dict[str, Any] = next(iter(status.get("initContainerStatuses") or []), {})
    restarts = 0
    crash: str | None = None
    waiting: str | None = None
    for part, where in ((fetch, " in the init container fetch-code"), (container, "")):
        restarts += int(part.get("restartCount", 0))
        terminated = (part.get("lastState") or {}).get("terminated")
        if part.get("restartCount") and terminated:
            crash = _ended(terminated) + where
        reason = ((part.get("state") or {}).get("waiting") or {}).get("reason")
        if reason and waiting != "CrashLoopBackOff":
            waiting = reason
    evicted = None
    if status.get("reason") == "Evicted":
        evicted = status.get("message") or "evicted by the kubelet"
    return PodView(
        uid=metadata["uid"],
        name=metadata.get("name", ""),
        endpoint=endpoint,
        version=version,
        ip=status.get("podIP"),
        ready=ready and event_type != "DELETED",
        restarts=restarts,
        crash=crash,
        waiting=waiting,
        terminating=bool(metadata.get("deletionTimestamp")),
        gone=event_type == "DELETED",
        evicted=evicted,
    )


def _replica_container(statuses: list[dict[str, Any]]) -> dict[str, Any] | None:
    for status in statuses:
        if status.get("name") in ("worker", "kafka-bridge"):
            return status
    return statuses[0] if statuses else None


def _ended(terminated: dict[str, Any]) -> str:
    code = terminated.get("exitCode")
    reason = terminated.get("reason")
    if reason == "OOMKilled":
        return "killed for exceeding its memory limit (OOMKilled)"
    text = f"exited with code {code}" if code is not None else "exited"
    return f"{text} ({reason})" if reason else text


def crash_cause(view: PodView) -> str:
    """The death cause, named as the local fleet names a process's (``oom``, ``exit``)."""
    return "oom" if view.crash and "OOMKilled" in view.crash else "exit"
