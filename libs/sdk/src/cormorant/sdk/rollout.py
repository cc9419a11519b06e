"""``client.rollouts``: versions of an endpoint, canary shares, promote, rollback, traffic,
shadow traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cormorant.sdk.transport import Requester

CHANGE_TIMEOUT_S = 330.0
"""A traffic change answers once the new version is ready (the deployer waits up to 240 s) and,
on a stream, once the consumer group was handed over: longer than the client's default."""


class Rollouts:
    """Model updates of an endpoint: ``client.rollouts.rollout("iris", "2", 10)``."""

    def __init__(self, client: Requester) -> None:
        self._client = client

    def create_version(self, slug: str, source: str | Path, **fields: Any) -> dict[str, Any]:
        """A new version of ``slug`` from ``source``; its replicas start, it gets no traffic."""
        body = {"source": str(source), **{k: v for k, v in fields.items() if v is not None}}
        result: dict[str, Any] = self._client.request(
            "POST", f"/api/v1/endpoints/{slug}/versions", json=body
        )
        return result

    def versions(self, slug: str) -> list[dict[str, Any]]:
        """Every version of ``slug``, newest first, with weight, role and replicas."""
        result = self._client.request("GET", f"/api/v1/endpoints/{slug}/versions")
        versions: list[dict[str, Any]] = result["versions"]
        return versions

    def rollout(
        self, slug: str, version: str, percent: int = 10, *, policy: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Give ``version`` ``percent`` of the traffic (or run ``policy``); the new traffic."""
        body: dict[str, Any] = {"version": str(version), "percent": percent}
        if policy is not None:
            body["policy"] = policy
        result: dict[str, Any] = self._client.request(
            "POST", f"/api/v1/endpoints/{slug}/rollout", json=body, timeout=CHANGE_TIMEOUT_S
        )
        return result

    def promote(self, slug: str) -> dict[str, Any]:
        """All traffic to the canary; the old version retires after draining."""
        result: dict[str, Any] = self._client.request(
            "POST", f"/api/v1/endpoints/{slug}/promote", timeout=CHANGE_TIMEOUT_S
        )
        return result

    def rollback(self, slug: str) -> dict[str, Any]:
        """All traffic back to the stable version; the canary retires after draining."""
        result: dict[str, Any] = self._client.request(
            "POST", f"/api/v1/endpoints/{slug}/rollback", timeout=CHANGE_TIMEOUT_S
        )
        return result

    def shadow(self, slug: str, version: str, percent: float = 100) -> dict[str, Any]:
        """Mirror ``percent`` of ``slug``'s live requests to ``version`` (running, without
        traffic): its answers are logged tagged shadow, never returned to callers."""
        body = {"version": str(version), "percent": percent}
        result: dict[str, Any] = self._client.request(
            "POST", f"/api/v1/endpoints/{slug}/shadow", json=body, timeout=CHANGE_TIMEOUT_S
        )
        return result

    def stop_shadow(self, slug: str) -> dict[str, Any]:
        """Stop mirroring ``slug``'s requests; the shadow version keeps running."""
        result: dict[str, Any] = self._client.request("DELETE", f"/api/v1/endpoints/{slug}/shadow")
        return result

    def get_shadow(self, slug: str) -> dict[str, Any]:
        """The shadow version of ``slug`` and the share mirrored to it (nulls when none)."""
        result: dict[str, Any] = self._client.request("GET", f"/api/v1/endpoints/{slug}/shadow")
        return result

    def traffic(self, slug: str) -> dict[str, Any]:
        """Weights, generation, versions with their replicas, history and rollouts."""
        result: dict[str, Any] = self._client.request("GET", f"/api/v1/endpoints/{slug}/traffic")
        return result
