"""``python -m cormorant.kafka_bridge``: run the KafkaBridge service."""

from __future__ import annotations

from cormorant.common.telemetry import configure_logging
from cormorant.common.web import serve
from cormorant.kafka_bridge.app import create_app
from cormorant.kafka_bridge.settings import KafkaBridgeSettings


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    settings = KafkaBridgeSettings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    serve(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )


if __name__ == "__main__":
    main()
