"""Stream endpoints from Python: create one on Kafka topics, read its lag, swap its model.

``Streams(client)`` wraps the stream routes of the management API::

    streams = Streams(Client())
    created = streams.create("fraud", "/models/fraud", input_topics=["payments"],
                             output_topic="scores", max_replicas=3)
    streams.status(created["slug"])["lag_total"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cormorant.sdk.client import Client


class Streams:
    """Stream endpoints of one ``Client``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        name: str,
        source: str | Path,
        *,
        input_topics: list[str],
        output_topic: str,
        bootstrap_servers: str | None = None,
        dlq_topic: str | None = None,
        security: dict[str, str] | None = None,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        lag_target: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Deploy ``source`` as a stream endpoint (refused if a topic is missing or
        ``max_replicas`` exceeds the input partitions); the answer holds its ``slug``."""
        kafka = _drop_none(
            {
                "bootstrap_servers": bootstrap_servers,
                "input_topics": input_topics,
                "output_topic": output_topic,
                "dlq_topic": dlq_topic,
                "security": security,
            }
        )
        replicas = _drop_none({"min": min_replicas, "max": max_replicas, "target": lag_target})
        return self._client.endpoints.create(
            name, source, kind="stream", kafka=kafka, replicas=replicas or None, **fields
        )

    def status(self, slug: str) -> dict[str, Any]:
        """Consumer lag (total and per partition), replicas and Kafka wiring of ``slug``."""
        result: dict[str, Any] = self._client.request("GET", f"/api/v1/endpoints/{slug}/stream")
        return result

    def swap(
        self,
        slug: str,
        *,
        source: str | Path | None = None,
        commit: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Roll out a new version of the code (or the stored ``version``) at 100%: the consumer
        group is handed over with no gap and no duplicate. Returns once the old replicas have
        left, with ``previous_version``, ``version`` and ``generation``."""
        previous = self._client.endpoints.get(slug)
        if version is None:
            created = self._client.rollouts.create_version(
                slug, str(source) if source else previous["source"], commit=commit
            )
            label = str(created["version"])
        else:
            label = str(version)
        traffic = self._client.rollouts.rollout(slug, label, 100)
        return {
            "slug": slug,
            "previous_version": previous["version"],
            "version": traffic["stable"],
            "generation": traffic["generation"],
        }


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
