"""``python -m cormorant.feedback``: run the Feedback service."""

from __future__ import annotations

from cormorant.common.telemetry import configure_logging
from cormorant.common.web import serve
from cormorant.feedback.app import create_app
from cormorant.feedback.settings import FeedbackSettings


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    settings = FeedbackSettings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    serve(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )


if __name__ == "__main__":
    main()
