"""``python -m cormorant.batch``: run the Batch service."""

from __future__ import annotations

from cormorant.batch.app import create_app
from cormorant.batch.settings import BatchSettings
from cormorant.common.web import run_service


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    run_service(create_app, BatchSettings())


if __name__ == "__main__":
    main()
