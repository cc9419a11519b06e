"""``python -m cormorant.deployer``: run the Deployer service."""

from __future__ import annotations

from cormorant.common.web import run_service
from cormorant.deployer.app import create_app
from cormorant.deployer.settings import DeployerSettings


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    run_service(create_app, DeployerSettings())


if __name__ == "__main__":
    main()
