"""``python -m cormorant.predictlog``: run the PredictLog service."""

from __future__ import annotations

import gc

from cormorant.common.telemetry import configure_logging
from cormorant.common.web import serve
from cormorant.predictlog.app import create_app
from cormorant.predictlog.settings import PredictLogSettings

# The ingest allocates a few containers per event (the decoded event, its JSON values, the
# row), nearly all freed by reference counting. At the default threshold (700) the cycle
# collector runs every few hundred events and costs about a third of the ingest's CPU.
GC_THRESHOLDS = (50_000, 20, 20)


def main() -> None:
    """Read settings from the environment and serve until stopped."""
    settings = PredictLogSettings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    app = create_app(settings)
    # What is alive now (modules, the app) lives as long as the process: keep it out of
    # every future collection.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    serve(app, host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
