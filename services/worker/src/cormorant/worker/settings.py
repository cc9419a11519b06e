"""Settings of one worker replica: which model it serves and how it serves it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from cormorant.common.predictor import DEFAULT_MAX_FILE_BYTES, PredictorSpec
from cormorant.common.settings import ServiceSettings

# 10 MiB: a Base64 image of a few MB fits, a runaway upload does not reach the model.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
# An event carries the input and the output; two of these stay under NATS's default 1 MiB
# max_payload even after Base64 grows a binary input by a third.
DEFAULT_LOG_MAX_BYTES = 256 * 1024


class WorkerSettings(ServiceSettings):
    """A worker replica: the model version it loads and the server that exposes it."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_WORKER_", extra="ignore", populate_by_name=True
    )

    source: Path = Path(".")
    """Directory of the model's code and artifacts; sibling modules import from it."""

    file: str = "predict.py"
    """File holding the predict function, relative to ``source``."""

    function: str = "predict"
    """Name of the predict function."""

    preprocess_file: str | None = None
    """File holding the preprocess function (defaults to ``file``)."""

    preprocess_function: str | None = None
    """Name of a preprocess function run before predict; none when unset."""

    accepts_file: bool = False
    """The input is a Base64 file, passed to the function as a temporary file's path."""

    endpoint: str = "local"
    """Slug of the endpoint this replica serves (tags logged predictions and metrics)."""

    endpoint_id: str | None = None
    """Database id of the endpoint, when the deployer passes it (tags logged predictions)."""

    version: str = "local"
    """Model version this replica serves (tags logged predictions and metrics)."""

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    """Largest request body accepted by ``/predict``; larger ones get 413."""

    max_file_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, gt=0)
    """Largest decoded input file when ``accepts_file`` is set; larger ones get 413."""

    temp_dir: Path | None = None
    """Where decoded input files are written (the system temporary directory when unset)."""

    server: dict[str, str] = Field(default_factory=dict)
    """Gunicorn settings as key-value strings (``workers``, ``threads``, ``timeout``...)."""

    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables exported to the predict code before it is imported."""

    log_predictions: bool = True
    """Publish every prediction (input, output or error, status, latency) as
    ``PredictionLogged`` to NATS when the server is reachable; never delays the answer."""

    log_max_bytes: int = Field(default=DEFAULT_LOG_MAX_BYTES, gt=0)
    """Largest input or output (in bytes of JSON) kept in a prediction's log event; a larger
    one is logged as a short note of its size, so the event still fits in a NATS message."""

    replica_key: SecretStr | None = None
    """The key every caller must present in ``Cormorant-Replica-Key`` (the deployer gives each
    replica its own; the gateway and the batch service compute it): without it every route
    but ``/healthz`` and ``/metrics`` answers 401. Unset: the port answers anyone (a worker
    run by hand)."""

    spool_dir: Path | None = None
    """Directory of the prediction spool: each answered prediction is written there before
    its answer leaves and kept until JetStream has it, so a killed worker loses none (a
    worker replays what a dead one left); unset: predictions wait for NATS in memory only."""

    publish_metrics: bool = True
    """Publish ``Endpoint().log_metric`` values to NATS when the server is reachable."""

    request_timeout_s: float | None = Field(default=None, gt=0)
    """Longest a predict call may run: past it the request gets 504 and the worker process
    running it is replaced (its thread cannot be stopped otherwise); unset: no deadline."""

    memory_mb: int | None = Field(default=None, gt=0)
    """Data segment each process of the replica may map (``RLIMIT_DATA``); unset: no limit."""

    max_processes: int | None = Field(default=None, gt=0)
    """Processes and threads the replica's uid may run (``RLIMIT_NPROC``); unset: no limit."""

    open_files: int | None = Field(default=None, gt=0)
    """File descriptors each process of the replica may hold (``RLIMIT_NOFILE``)."""

    deaths_fd: int | None = None
    """An inherited file descriptor the gunicorn master reports each worker death to (one
    JSON line each), for the deployer; closed in the workers, so predict code cannot reach it."""

    nats_connect_timeout: float = Field(default=2.0, gt=0)
    """Seconds each attempt to reach NATS may take; until one succeeds (retried in the
    background) predictions and metrics are served but not published."""

    def predictor_spec(self) -> PredictorSpec:
        """The predict contract this replica loads."""
        return PredictorSpec(
            source=self.source,
            file=self.file,
            function=self.function,
            preprocess_file=self.preprocess_file,
            preprocess_function=self.preprocess_function,
            accepts_file=self.accepts_file,
            max_file_bytes=self.max_file_bytes,
        )
