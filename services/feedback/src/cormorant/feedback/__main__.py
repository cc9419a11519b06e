"""``python -m cormorant.feedback``: run the Feedback service."""

from __future__ import annotations

from cormorant.common.web import run_service
from cormorant.feedback.app import create_app
from cormorant.feedback.settings import FeedbackSettings


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    run_service(create_app, FeedbackSettings())


if __name__ == "__main__":
    main()
