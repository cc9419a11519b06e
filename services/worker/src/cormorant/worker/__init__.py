"""The model server every replica runs: one model version behind ``/predict``."""

from cormorant.worker.app import create_app
from cormorant.worker.settings import WorkerSettings

__all__ = ["WorkerSettings", "create_app"]
