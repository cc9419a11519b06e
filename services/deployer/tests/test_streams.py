"""Stream endpoint pieces that need no broker: the kafka section, lag arithmetic, bridge flags.

The broker checks, the swap and the lag autoscaler run end to end in
``tests/test_stream_endpoints.py``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cormorant.common.endpoints.kafka import parse_kafka, public_kafka
from cormorant.common.endpoints.schemas import EndpointSpec, ReplicasSpec
from cormorant.fleet.lag import desired_for_lag, group_lag, parse_metrics
from cormorant.fleet.replica import bridge_options
from cormorant.fleet.runtime import ReplicaLaunch

METRICS = """\
# HELP cormorant_kafka_bridge_messages_produced_total Predictions produced.
# TYPE cormorant_kafka_bridge_messages_produced_total counter
cormorant_kafka_bridge_messages_produced_total 1200.0
# TYPE cormorant_kafka_bridge_messages_dlq_total counter
cormorant_kafka_bridge_messages_dlq_total 3.0
# TYPE cormorant_kafka_bridge_assigned_partitions gauge
cormorant_kafka_bridge_assigned_partitions 2.0
# TYPE cormorant_kafka_bridge_lag gauge
cormorant_kafka_bridge_lag{partition="0",topic="orders"} 40.0
cormorant_kafka_bridge_lag{partition="2",topic="orders"} 2.0
# TYPE cormorant_kafka_bridge_lag_total gauge
cormorant_kafka_bridge_lag_total 42.0
"""


def test_the_replica_metrics_give_lag_per_partition_and_counts() -> None:
    """What the autoscaler and ``stream status`` read from a bridge's ``/metrics``."""
    stats = parse_metrics(METRICS)
    assert stats.lag == {("orders", 0): 40, ("orders", 2): 2}
    assert (stats.produced, stats.dead_lettered, stats.assigned_partitions) == (1200, 3, 2)
    other = parse_metrics('cormorant_kafka_bridge_lag{partition="1",topic="orders"} 7.0\n')
    # Mid-rebalance two replicas may report one partition: it counts once.
    stale = parse_metrics('cormorant_kafka_bridge_lag{partition="0",topic="orders"} 30.0\n')
    assert sum(group_lag([stats, other, stale]).values()) == 49


@pytest.mark.parametrize(
    ("lag", "partitions", "expected"),
    [
        (0, 3, 1),  # no lag: min
        (150, 3, 2),  # ceil(150 / 100)
        (10_000, 3, 3),  # clamped to max
        (10_000, 2, 2),  # never more replicas than partitions
    ],
)
def test_desired_replicas_follow_keda_kafka_scaler(
    lag: int, partitions: int, expected: int
) -> None:
    """``ceil(lag / target)`` within ``[min, max]`` and the partition count."""
    bounds = ReplicasSpec(min=1, max=3, target=100)
    assert desired_for_lag(lag, bounds, partitions) == expected


def test_the_kafka_section_gets_defaults_and_names_each_mistake() -> None:
    """The bootstrap servers default to the deployer's; errors name the field."""
    kafka = parse_kafka(
        {"input_topics": "orders", "output_topic": "scores"}, default_bootstrap="kafka:9092"
    )
    assert kafka.bootstrap_servers == "kafka:9092"
    assert kafka.input_topics == ["orders"]
    assert kafka.dead_letter_topic == "scores.dlq"
    with pytest.raises(ValueError, match=r"kafka\.topics: unknown field; accepted fields are"):
        parse_kafka({"topics": ["x"], "output_topic": "o"}, default_bootstrap="k:1")


def test_secrets_are_masked_and_passed_in_the_environment(tmp_path: Path) -> None:
    """SASL passwords never show in the API nor on the replica's command line."""
    stored = parse_kafka(
        {
            "input_topics": ["orders"],
            "output_topic": "scores",
            "security": {"sasl.username": "svc", "sasl.password": "hunter2"},
        },
        default_bootstrap="kafka:9092",
    ).model_dump(mode="json")
    shown = public_kafka(stored)
    assert shown is not None
    assert shown["security"] == {"sasl.username": "svc", "sasl.password": "***"}

    spec = EndpointSpec(
        name="fraud", kind="stream", source=str(tmp_path), commit=None, file="predict.py",
        function="predict", preprocess_file=None, preprocess_function=None, accepts_file=False,
        env={}, server={}, replicas=ReplicasSpec(min=1, max=1, target=10), timeout_s=60,
        kafka=stored,
    )  # fmt: skip
    endpoint_id = uuid.uuid4()
    options = bridge_options("fraud", endpoint_id, spec)
    launch = ReplicaLaunch("r1", "fraud", "1", tmp_path, "predict.py", "predict", bridge=options)
    args = launch.bridge_args()
    assert "hunter2" not in " ".join(args)
    assert args[args.index("--group") + 1] == f"cormorant-fraud-{endpoint_id.hex[:8]}"
    assert "hunter2" in options.environment()["CORMORANT_KAFKA_BRIDGE_SECURITY"]
