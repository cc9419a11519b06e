"""Command line of a stream-endpoint replica: flags → ``KafkaBridgeSettings`` → the replica.

Every flag overrides its ``CORMORANT_KAFKA_BRIDGE_*`` setting; ``--input-topic``,
``--security`` and ``--env`` repeat. Exit codes: 0 after a graceful stop, 2 for a
configuration that cannot work (bad flags, model import, missing topics), 1 for a runtime
failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from cormorant.common.cliargs import describe_settings_error, key_value_pairs
from cormorant.common.errors import CormorantError
from cormorant.common.kafka_security import client_security
from cormorant.common.predictor import check_spec
from cormorant.common.telemetry import configure_logging
from cormorant.kafka_bridge.replica import EXIT_REFUSED, Replica
from cormorant.kafka_bridge.settings import KafkaBridgeSettings

PROG = "python -m cormorant.kafka_bridge"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag is optional over ``CORMORANT_KAFKA_BRIDGE_*``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run one replica of a stream endpoint: consume the input topics, predict "
        "each message, produce to the output topic (dead letters to the DLQ topic).",
        argument_default=argparse.SUPPRESS,
    )
    add = parser.add_argument
    add("--source", help="directory of the model's code and artifacts")
    add("--file", help="file holding the predict function, e.g. predict.py")
    add("--function", help="name of the predict function (default: predict)")
    add("--preprocess-file", dest="preprocess_file", help="file of the preprocess function")
    add("--preprocess-function", dest="preprocess_function", help="preprocess function name")
    add("--accepts-file", dest="accepts_file", action="store_true",
        help="pass each message value as a temporary file's path")  # fmt: skip
    add("--env", action="append", metavar="KEY=VALUE",
        help="environment variable for the predict code, set before it is imported")  # fmt: skip
    add("--endpoint", help="slug of the stream endpoint")
    add("--version", help="model version served")
    add("--bootstrap-servers", dest="bootstrap_servers", metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers")  # fmt: skip
    add("--input-topic", dest="input_topics", action="append", metavar="TOPIC",
        help="topic to consume (repeatable)")  # fmt: skip
    add("--output-topic", dest="output_topic", metavar="TOPIC", help="topic of the predictions")
    add("--dlq-topic", dest="dlq_topic", metavar="TOPIC",
        help="dead-letter topic (default: <output topic>.dlq)")  # fmt: skip
    add("--group", help="consumer group of the endpoint (shared by its versions)")
    add("--security", action="append", metavar="KEY=VALUE",
        help="SASL/SSL option, e.g. security_protocol=SASL_SSL (repeatable; put secrets in "
        "CORMORANT_KAFKA_BRIDGE_SECURITY instead)")  # fmt: skip
    add("--metrics-port", dest="port", type=int, metavar="N",
        help="port of /healthz and /metrics (default: a free one)")  # fmt: skip
    add("--metrics-host", dest="host", metavar="HOST", help="interface of /healthz and /metrics")
    add("--max-batch", dest="max_batch", type=int, metavar="N",
        help="most messages per batch (default: 500)")  # fmt: skip
    add("--predict-threads", dest="predict_threads", type=int, metavar="N",
        help="threads a batch is predicted on (default: 1)")  # fmt: skip
    add("--check", action="store_true",
        help="validate flags and the predict file without importing it, exit 0 or 2")  # fmt: skip
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> KafkaBridgeSettings:
    """Settings from ``CORMORANT_KAFKA_BRIDGE_*`` variables overridden by ``argv``'s flags."""
    parser = build_parser()
    given: dict[str, Any] = vars(parser.parse_args(argv))
    given.pop("check", None)
    try:
        security = key_value_pairs(given.pop("security", []), "--security")
        env = key_value_pairs(given.pop("env", []), "--env")
    except ValueError as exc:
        parser.error(str(exc))
    base = KafkaBridgeSettings()
    settings = KafkaBridgeSettings(
        **given, security={**base.security, **security}, env={**base.env, **env}
    )
    # Absolute before the chdir into it, so the model is found wherever the replica runs.
    return settings.model_copy(update={"source": settings.source.resolve()})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the replica until SIGTERM; 2 for a refused configuration."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = parse_settings(args)
        missing = settings.missing()
        if missing:
            return _refuse(f"missing {', '.join(missing)}")
        # The checks that need no import or broker fail here, before anything starts.
        check_spec(settings.predictor_spec())
        client_security(settings.security)
    except CormorantError as exc:
        return _refuse(exc.message)
    except ValidationError as exc:
        return _refuse(describe_settings_error(exc))
    if "--check" in args:
        return 0
    configure_logging(settings.log_level, json_lines=settings.log_json)
    # Model code opens its artifacts relative to its own directory, as it did when written.
    os.chdir(settings.source)
    return asyncio.run(_run(settings))


async def _run(settings: KafkaBridgeSettings) -> int:
    replica = Replica(settings)
    replica.install_signal_handlers()
    return await replica.run()


def _refuse(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_REFUSED
