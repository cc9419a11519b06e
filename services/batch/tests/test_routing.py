"""The deployer's routing snapshot and demand answer parse into typed models, and the ready
replicas a job sends to follow the snapshot and the events that arrived while it was read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cormorant.batch.capacity import ReadyReplicas
from cormorant.batch.routing import EndpointState, Route
from cormorant.common.events import ReplicaChanged

# As the deployer's GET /internal/routing/{slug} answers, fields a job ignores included.
SNAPSHOT = b"""{
  "slug": "scorer", "endpoint_id": "6f1c", "kind": "batch", "status": "running",
  "timeout_s": 30.0, "generation": 4, "weights": {"1": 100},
  "replicas": [
    {"id": "r1", "version": "1", "url": "http://127.0.0.1:9001", "state": "ready"},
    {"id": "r2", "version": "1", "url": "", "state": "ready"},
    {"id": "r3", "version": "1", "url": "http://127.0.0.1:9003", "state": "starting"},
    {"id": "r4", "version": "1", "url": "http://127.0.0.1:9004", "state": "ready"}
  ]
}"""


def test_a_snapshot_parses_into_its_ready_replicas() -> None:
    """Only ready replicas with an address are ready; unknown fields are ignored."""
    route = Route.model_validate_json(SNAPSHOT)
    assert route.slug == "scorer"
    assert [r.id for r in route.replicas] == ["r1", "r2", "r3", "r4"]
    assert route.ready() == {"r1": "http://127.0.0.1:9001", "r4": "http://127.0.0.1:9004"}


@pytest.mark.parametrize(
    "answer",
    [
        b"{}",
        b'{"detail": "not found"}',
        b"[]",
        b'{"replicas": {"id": "r1"}}',
        b'{"replicas": [{"url": "http://x"}]}',
        b"not json",
    ],
)
def test_a_malformed_snapshot_is_refused(answer: bytes) -> None:
    """A snapshot of the wrong shape raises instead of reading as no replicas."""
    with pytest.raises(ValidationError):
        Route.model_validate_json(answer)


def test_the_demand_answer_parses_its_status_and_reason() -> None:
    """The endpoint's state after a demand: status and reason, other fields ignored."""
    state = EndpointState.model_validate_json(
        b'{"slug": "scorer", "status": "failed", "reason": "exit 1", "desired": 2, "ready": 0}'
    )
    assert (state.status, state.reason) == ("failed", "exit 1")


def test_a_demand_answer_without_a_status_is_refused() -> None:
    """An error body is not an endpoint left "deploying"."""
    with pytest.raises(ValidationError):
        EndpointState.model_validate_json(b'{"detail": "endpoint scorer was not found"}')


def _event(replica_id: str, state: str, url: str | None = None) -> ReplicaChanged:
    return ReplicaChanged(
        endpoint="scorer", version="1", replica_id=replica_id, state=state, url=url
    )


def test_events_during_the_read_win_over_the_snapshot() -> None:
    """A replica that left or joined while the snapshot was read keeps the event's word."""
    view = ReadyReplicas("scorer")
    view.fetching()
    view.apply(_event("r1", "draining"))
    view.apply(_event("r5", "ready", "http://127.0.0.1:9005"))
    view.apply_route(Route.model_validate_json(SNAPSHOT))
    assert dict(view.urls()) == {
        "r4": "http://127.0.0.1:9004",
        "r5": "http://127.0.0.1:9005",
    }
    # After the read, events edit the picture directly.
    view.apply(_event("r4", "crashed"))
    assert dict(view.urls()) == {"r5": "http://127.0.0.1:9005"}
