"""``python -m cormorant.deployer``: run the Deployer service."""

from __future__ import annotations

import logging

from cormorant.common.telemetry import configure_logging
from cormorant.common.web import serve
from cormorant.deployer.app import create_app
from cormorant.deployer.settings import DeployerSettings


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    settings = DeployerSettings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    # Replicas are probed ten times a second while they start: one line per probe is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    serve(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )


if __name__ == "__main__":
    main()
