"""``python -m cormorant.gateway``: run the Gateway service."""

from __future__ import annotations

from cormorant.common.web import run_service
from cormorant.gateway.app import create_app
from cormorant.gateway.settings import GatewaySettings


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    run_service(create_app, GatewaySettings())


if __name__ == "__main__":
    main()
