"""The model of this worker process: imported once, off the event loop, then shared."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from cormorant.common.errors import CormorantError, ServiceUnavailable
from cormorant.common.predictor import Predictor
from cormorant.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

PredictorFactory = Callable[[], Predictor]


class ModelLoadFailed(ServiceUnavailable):
    """The model could not be imported; the replica stays up and says why."""

    code = "model_load_failed"

    @classmethod
    def from_exception(cls, exc: BaseException) -> ModelLoadFailed:
        """The load failure for ``exc``, keeping a contract error's code and message."""
        if isinstance(exc, CormorantError):
            return cls(
                f"the model could not be loaded: {exc.message}", details={"reason": exc.code}
            )
        return cls(f"the model could not be loaded: {type(exc).__name__}: {exc}")


class ModelState:
    """Loading, loaded or failed; predict requests wait for a load in progress."""

    def __init__(self, metrics: WorkerMetrics, predictor: Predictor | None = None) -> None:
        self.metrics = metrics
        self.predictor = predictor
        self.error: ModelLoadFailed | None = None
        self._loading: asyncio.Future[Predictor] | None = None
        metrics.model_ready.set(1 if predictor is not None else 0)

    def start(self, pool: Executor, factory: PredictorFactory) -> None:
        """Import the model in ``pool`` so the loop keeps answering ``/healthz`` meanwhile."""
        started = time.perf_counter()
        self._loading = asyncio.get_running_loop().run_in_executor(pool, factory)
        self._loading.add_done_callback(lambda done: self._finish(done, started))

    def ready(self) -> bool:
        """True once loaded; a failed load raises its reason so ``/healthz`` answers 503 with it."""
        if self.error is not None:
            raise self.error
        return self.predictor is not None

    async def get(self) -> Predictor:
        """The predictor, waiting for a load in progress; ``ModelLoadFailed`` if it failed."""
        if self.predictor is not None:
            return self.predictor
        if self.error is None and self._loading is not None:
            # Shielded: a client that hangs up must not cancel the import for everyone.
            await asyncio.wait([asyncio.shield(self._loading)])
        if self.predictor is not None:
            return self.predictor
        raise self.error or ModelLoadFailed("the model is not loaded")

    def _finish(self, done: asyncio.Future[Predictor], started: float) -> None:
        if done.cancelled():
            self.error = ModelLoadFailed("the model load was cancelled")
            return
        exc = done.exception()
        if exc is not None:
            self.error = ModelLoadFailed.from_exception(exc)
            log.error(self.error.message, exc_info=exc)
            return
        self.predictor = done.result()
        self.metrics.model_ready.set(1)
        log.info("model loaded in %.2f s", time.perf_counter() - started)
