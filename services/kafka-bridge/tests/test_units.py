"""The pieces of a replica that need no broker: predict semantics, headers, options, flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from cormorant.common.kafka_security import InvalidSecurityOption, client_security
from cormorant.common.predictor import Predictor, PredictorSpec
from cormorant.kafka_bridge.cli import main, parse_settings
from cormorant.kafka_bridge.dlq import dead_letter
from cormorant.kafka_bridge.lag import LagCollector
from cormorant.kafka_bridge.predict import BatchPredictor, Failed, Predicted
from cormorant.kafka_bridge.produce import (
    identity_headers,
    request_id,
    request_id_prefix,
    source_headers,
)

MODELS = Path(__file__).parent / "models"


def predictor(function: str, *, tries: int = 3) -> BatchPredictor:
    """The test model's ``function``, as a replica runs it."""
    spec = PredictorSpec(source=MODELS, file="stream.py", function=function)
    return BatchPredictor(Predictor.load(spec), tries=tries, backoff=0)


def test_a_prediction_is_json_and_bytes_pass_through() -> None:
    """A dict result is JSON-encoded; a bytes result is the output message as it is."""
    json_out = predictor("predict").predict_one(b'{"id": 3, "n": 4}')
    assert isinstance(json_out, Predicted)
    assert json_out.payload == b'{"id":3,"double":8}'
    raw = b"\xff\x00 not json"
    echoed = predictor("echo").predict_one(raw)
    assert isinstance(echoed, Predicted)
    assert echoed.payload == raw
    assert echoed.output == raw


def test_a_generator_is_collected_into_one_message() -> None:
    """predict yielding chunks produces one message: the JSON array of the chunks."""
    outcome = predictor("chunks").predict_one(b'{"id": 5}')
    assert isinstance(outcome, Predicted)
    assert outcome.payload == b'[{"id":5,"part":1},{"id":5,"part":2}]'


def test_a_raising_predict_is_tried_again_then_dead_lettered() -> None:
    """A transient failure is retried; one that persists fails with its type and message."""
    flaky = predictor("flaky").predict_one(b'{"id": 77}')
    assert isinstance(flaky, Predicted)
    assert flaky.attempts == 2
    poison = predictor("predict", tries=4).predict_one(b'{"id": 9, "poison": true}')
    assert isinstance(poison, Failed)
    assert (poison.error_type, poison.message, poison.stage, poison.attempts) == (
        "ValueError",
        "poison message 9",
        "predict",
        4,
    )


def test_unreadable_messages_fail_without_retries() -> None:
    """Not JSON, or no value at all (a tombstone): dead-lettered, not predicted again."""
    garbage = predictor("predict").predict_one(b"\x00\x01")
    assert isinstance(garbage, Failed)
    assert garbage.stage == "predict"
    tombstone = predictor("predict").predict_one(None)
    assert isinstance(tombstone, Failed)
    assert (tombstone.error_type, tombstone.stage, tombstone.attempts) == ("EmptyValue", "input", 0)


def test_headers_trace_an_output_to_its_input() -> None:
    """Source coordinates, identity and a request id stable across replays."""
    prefix = request_id_prefix("orders", "in")
    request = request_id(prefix, 2, 41)
    assert request == request_id(request_id_prefix("orders", "in"), 2, 41)
    assert request != request_id(request_id_prefix("fraud", "in"), 2, 41)
    headers = dict(source_headers(b"in", b"2", 41, identity_headers("orders", "7"), request))
    assert headers == {
        "cormorant-source-topic": b"in",
        "cormorant-source-partition": b"2",
        "cormorant-source-offset": b"41",
        "cormorant-endpoint": b"orders",
        "cormorant-version": b"7",
        "cormorant-request-id": request.encode(),
    }


def test_a_dead_letter_keeps_the_input_and_says_why() -> None:
    """The input's key, value and own headers, plus the error headers."""
    failure = Failed("ValueError", "bad", "predict", 0.1, 3)
    source = [("cormorant-source-offset", b"1")]
    original = [("trace", b"t"), ("cormorant-x", b"y")]
    letter = dead_letter("out.dlq", b"k", b"v", original, source, failure)
    assert (letter.topic, letter.key, letter.value) == ("out.dlq", b"k", b"v")
    assert dict(letter.headers) == {
        "trace": b"t",
        "cormorant-source-offset": b"1",
        "cormorant-error-type": b"ValueError",
        "cormorant-error-message": b"bad",
        "cormorant-error-stage": b"predict",
        "cormorant-attempts": b"3",
    }


def test_lag_is_exposed_per_partition() -> None:
    """One gauge sample per partition and their sum."""
    families = list(LagCollector(lambda: {("in", 0): 5, ("in", 1): 0}).collect())
    samples = {(s.name, tuple(s.labels.values())): s.value for f in families for s in f.samples}
    assert samples == {
        ("cormorant_kafka_bridge_lag", ("in", "0")): 5,
        ("cormorant_kafka_bridge_lag", ("in", "1")): 0,
        ("cormorant_kafka_bridge_lag_total", ()): 5,
    }


def test_security_options_in_either_spelling() -> None:
    """aiokafka's names or the Kafka properties' names; unknown keys are refused."""
    options = client_security(
        {
            "security.protocol": "sasl_plaintext",
            "sasl.mechanism": "scram-sha-512",
            "sasl.username": "u",
            "sasl_plain_password": "p",
        }
    )
    assert options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    assert "ssl_context" in client_security({"security_protocol": "SSL"})
    with pytest.raises(
        InvalidSecurityOption, match=r"unknown Kafka security option 'sasl\.secret'"
    ):
        client_security({"sasl.secret": "x"})
    with pytest.raises(InvalidSecurityOption, match="security_protocol 'TLS'"):
        client_security({"security_protocol": "tls"})
    with pytest.raises(InvalidSecurityOption, match="sasl_mechanism 'MD5' is not one of"):
        client_security({"sasl_mechanism": "md5"})


def test_flags_become_settings() -> None:
    """Repeatable topics and security options; the metrics port; DLQ name defaulted."""
    settings = parse_settings(
        [
            "--source",
            str(MODELS),
            "--file",
            "stream.py",
            "--endpoint",
            "orders",
            "--version",
            "3",
            "--bootstrap-servers",
            "k1:9092,k2:9092",
            "--input-topic",
            "a",
            "--input-topic",
            "b",
            "--output-topic",
            "scores",
            "--group",
            "orders",
            "--security",
            "security_protocol=SSL",
            "--metrics-port",
            "9107",
        ]
    )
    assert settings.input_topics == ["a", "b"]
    assert settings.dead_letter_topic == "scores.dlq"
    assert settings.security == {"security_protocol": "SSL"}
    assert settings.port == 9107
    assert settings.source == MODELS.resolve()


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        ([], "missing --input-topic, --output-topic, --group"),
        (["--file", "my-model.py"], "rename it, e.g. my_model.py"),
        (["--endpoint", "Orders!"], "endpoint"),
        (["--output-topic", "a"], "output topic 'a' is also an input topic"),
        (["--security", "sasl.secret=x"], "unknown Kafka security option"),
        (["--input-topic", "bad topic"], "not a Kafka topic name"),
    ],
)
def test_a_configuration_that_cannot_work_exits_2(
    flags: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before anything starts, with a message that says what to fix."""
    base = ["--source", str(MODELS), "--file", "stream.py"]
    if flags:
        base += ["--input-topic", "a", "--output-topic", "b", "--group", "g"]
    assert main([*base, *flags]) == 2
    assert reason in capsys.readouterr().err


def test_check_validates_without_starting(capsys: pytest.CaptureFixture[str]) -> None:
    """``--check``: flags and the predict file are checked, nothing is imported or joined."""
    flags = f"--source {MODELS} --file stream.py --input-topic a --output-topic b --group g"
    assert main([*flags.split(), "--check"]) == 0
    assert capsys.readouterr().err == ""
