"""``python -m cormorant.alerts``: run the Alerts service."""

from __future__ import annotations

from cormorant.alerts.app import create_app
from cormorant.alerts.settings import AlertsSettings
from cormorant.common.web import run_service


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    run_service(create_app, AlertsSettings())


if __name__ == "__main__":
    main()
