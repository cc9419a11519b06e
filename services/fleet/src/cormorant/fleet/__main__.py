"""``python -m cormorant.fleet``: run the Fleet service."""

from __future__ import annotations

from cormorant.common.web import run_service
from cormorant.fleet.app import create_app
from cormorant.fleet.settings import FleetSettings


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    run_service(create_app, FleetSettings())


if __name__ == "__main__":
    main()
