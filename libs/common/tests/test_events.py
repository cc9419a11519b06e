"""The event catalogue: round trips, subjects, validation, and the wire through real NATS."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import get_args

import nats
import pytest
from pydantic import ValidationError

from cormorant.common.events import (
    EVENT_TYPE_HEADER,
    EVENT_TYPES,
    MSG_ID_HEADER,
    AlertFired,
    AnyEvent,
    BatchJobChanged,
    EndpointChanged,
    Event,
    EventDecodeError,
    FeedbackRunFinished,
    FlowRunChanged,
    InvalidSubjectToken,
    LoadReported,
    MetricLogged,
    PredictionLogged,
    ReplicaChanged,
    TrafficChanged,
    VersionCreated,
    decode,
    subject_token,
)

NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def catalogue() -> list[tuple[Event, str]]:
    """One instance of every event type and the subject it must be published on."""
    return [
        (
            EndpointChanged(endpoint="iris", change="created", attributes={"kind": "web"}),
            "cormorant.endpoint.iris.created",
        ),
        (
            VersionCreated(endpoint="iris", version="v2", attributes={"function": "predict"}),
            "cormorant.endpoint.iris.version-created",
        ),
        (
            TrafficChanged(endpoint="iris", generation=7, weights={"v1": 90, "v2": 10}),
            "cormorant.traffic.iris",
        ),
        (
            ReplicaChanged(
                endpoint="iris", version="v2", replica_id="r-1", state="ready",
                url="http://127.0.0.1:9001",
            ),
            "cormorant.replica.iris",
        ),
        (
            LoadReported(
                endpoint="iris", gateway="gw-1", interval_s=1.0,
                concurrency={"r-1": 2.5}, requests=40,
            ),
            "cormorant.load.iris",
        ),
        (
            PredictionLogged(
                request_id="req-1", endpoint="iris", version="v2",
                input=[[5.1, 3.5, 1.4, 0.2], {"units": "cm"}], output={"class": "setosa"},
                status=200, latency_ms=3.25, received_at=NOW, trace_id="ab" * 16,
            ),
            "cormorant.predictions.iris",
        ),
        (
            MetricLogged(endpoint="iris", version="v2", key="accuracy", value=0.93),
            "cormorant.metrics.iris",
        ),
        (
            BatchJobChanged(
                endpoint="iris-batch", job_id="j-1", status="running", rows_done=10,
                rows_total=100, failures=1,
            ),
            "cormorant.batch.iris-batch",
        ),
        (
            AlertFired(
                trigger_id="t_42", endpoint="iris", metric="accuracy", value=0.7,
                threshold=0.8, action="flow", severity="critical", title="accuracy-drop",
                count=3, values=[0.75, 0.72, 0.7],
            ),
            "cormorant.alerts.t_42",
        ),
        (
            FlowRunChanged(flow="retrain-iris", run_id="run-1", task="train", status="running"),
            "cormorant.flows.retrain-iris",
        ),
        (
            FeedbackRunFinished(
                endpoint="iris", loop_id="l-1", run_id="r-1", dataset="scores",
                status="succeeded", rows=42, dataset_version=3,
            ),
            "cormorant.feedback.iris",
        ),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("event", "subject"), catalogue(), ids=[type(e).__name__ for e, _ in catalogue()]
)
def test_round_trip(event: Event, subject: str) -> None:
    data = event.encode()
    headers = event.headers()

    decoded = decode(data, headers)

    assert type(decoded) is type(event)
    assert decoded == event
    assert event.subject == subject
    assert headers == {EVENT_TYPE_HEADER: event.event_type, MSG_ID_HEADER: event.event_id}
    assert b" " not in data.replace(b'" "', b"")  # compact JSON: no separators padding


def test_catalogue_covers_every_registered_type() -> None:
    assert set(EVENT_TYPES.values()) == set(get_args(AnyEvent))
    assert {type(e) for e, _ in catalogue()} == set(EVENT_TYPES.values())
    assert all(cls.event_type == name for name, cls in EVENT_TYPES.items())


def test_defaults_give_unique_ids_and_utc_times() -> None:
    a = MetricLogged(endpoint="iris", version="v1", key="k", value=1.0)
    b = MetricLogged(endpoint="iris", version="v1", key="k", value=1.0)
    assert a.event_id != b.event_id
    assert len(a.event_id) == 32
    assert a.occurred_at.tzinfo is UTC
    assert a.logged_at.tzinfo is UTC


def test_datetimes_are_normalised_to_utc_and_naive_ones_refused() -> None:
    paris = timezone(timedelta(hours=2))
    event = MetricLogged(
        endpoint="iris", version="v1", key="k", value=1.0,
        logged_at=datetime(2024, 5, 1, 14, 0, tzinfo=paris),
    )  # fmt: skip
    assert event.logged_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert event.logged_at.tzinfo is UTC
    with pytest.raises(ValidationError):
        MetricLogged(
            endpoint="iris", version="v1", key="k", value=1.0, logged_at=datetime(2024, 5, 1)
        )


@pytest.mark.parametrize("slug", ["a.b", "a*", "a>", "a b", "", "Iris", "-iris", "iris\n", "é"])
def test_invalid_endpoint_slug_refused(slug: str) -> None:
    with pytest.raises(ValidationError, match="subject token"):
        PredictionLogged(
            request_id="r", endpoint=slug, version="v1", input=1, status=200,
            latency_ms=1.0, received_at=NOW,
        )  # fmt: skip
    with pytest.raises(InvalidSubjectToken):
        TrafficChanged.subject_filter(slug)


@pytest.mark.parametrize("token", ["x.y", "*", ">", "with space", "", "tab\t"])
def test_invalid_trigger_and_flow_tokens_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="subject token"):
        AlertFired(
            trigger_id=token, endpoint="iris", metric="m", value=1, threshold=2, action="email"
        )
    with pytest.raises(ValidationError, match="subject token"):
        FlowRunChanged(flow=token, run_id="r", status="running")
    with pytest.raises(InvalidSubjectToken):
        subject_token(token)


def test_subject_filters() -> None:
    assert PredictionLogged.subject_filter() == "cormorant.predictions.>"
    assert PredictionLogged.subject_filter("iris") == "cormorant.predictions.iris"
    assert EndpointChanged.subject_filter() == "cormorant.endpoint.>"
    assert VersionCreated.subject_filter("iris") == "cormorant.endpoint.iris.>"
    assert AlertFired.subject_filter("T_1") == "cormorant.alerts.T_1"


def test_traffic_weights_must_sum_to_100() -> None:
    with pytest.raises(ValidationError, match="sum to 100"):
        TrafficChanged(endpoint="iris", generation=1, weights={"v1": 50, "v2": 40})
    with pytest.raises(ValidationError):
        TrafficChanged(endpoint="iris", generation=1, weights={"v1": 101})
    assert TrafficChanged(endpoint="iris", generation=0, weights={}).weights == {}


def test_events_are_immutable() -> None:
    event = MetricLogged(endpoint="iris", version="v1", key="k", value=1.0)
    with pytest.raises(ValidationError):
        event.value = 2.0  # type: ignore[misc]


def test_decode_refuses_unknown_missing_and_invalid() -> None:
    event = MetricLogged(endpoint="iris", version="v1", key="k", value=1.0)
    with pytest.raises(EventDecodeError, match="no Cormorant-Event header"):
        decode(event.encode(), None)
    with pytest.raises(EventDecodeError, match="unknown event type") as unknown:
        decode(event.encode(), {EVENT_TYPE_HEADER: "Nope"})
    assert unknown.value.event_type == "Nope"
    with pytest.raises(EventDecodeError, match="invalid MetricLogged"):
        decode(b'{"endpoint": "iris"}', event.headers())
    with pytest.raises(EventDecodeError):
        decode(b"not json", event.headers())


def test_decode_ignores_fields_from_newer_producers() -> None:
    event = MetricLogged(endpoint="iris", version="v1", key="k", value=1.0)
    data = event.encode()[:-1] + b',"added_later":true}'
    assert decode(data, event.headers()) == event


async def test_every_event_crosses_real_nats(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.subscribe("cormorant.>")
        sent = [event for event, _ in catalogue()]
        for event in sent:
            await nc.publish(event.subject, event.encode(), headers=event.headers())
        received = []
        async with asyncio.timeout(10):
            for _ in sent:
                msg = await sub.next_msg(timeout=10)
                received.append((msg.subject, decode(msg.data, msg.headers)))
        assert received == [(event.subject, event) for event in sent]
    finally:
        await nc.close()
