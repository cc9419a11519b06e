"""Test support: the batch service run in-process against real servers. Requires the
``asgi-lifespan`` development dependency."""

from __future__ import annotations

from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from cormorant.batch.app import create_app
from cormorant.batch.settings import BatchSettings
from cormorant.common.internal import InternalAuth, internal_client
from cormorant.devstack.testing.waits import eventually


class BatchHarness:
    """The batch app with its lifespan running (restartable), a client of it and one of the
    deployer it asks for capacity."""

    def __init__(self, settings: BatchSettings) -> None:
        self.settings = settings
        self.deployer = internal_client(settings, base_url=settings.deployer_url, timeout=120)
        self._manager: LifespanManager | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The client of the running app."""
        assert self._client is not None, "the batch service is not running"
        return self._client

    async def start(self) -> None:
        """Run the app's start-up."""
        self._manager = LifespanManager(
            create_app(self.settings), startup_timeout=60, shutdown_timeout=60
        )
        await self._manager.__aenter__()
        transport = httpx.ASGITransport(app=self._manager.app)
        self._client = httpx.AsyncClient(
            transport=transport,
            base_url="http://batch",
            timeout=120,
            auth=InternalAuth(self.settings.internal_secret),
        )

    async def stop(self) -> None:
        """Shut the app down (running jobs end ``failed``)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._manager is not None:
            manager, self._manager = self._manager, None
            await manager.__aexit__(None, None, None)

    async def restart(self) -> None:
        """Stop the app and start a new one on the same database."""
        await self.stop()
        await self.start()

    async def close(self) -> None:
        """Stop the app and close the deployer's client."""
        await self.stop()
        await self.deployer.aclose()

    async def create_endpoint(self, **body: Any) -> str:
        """Create an endpoint on the deployer; its slug."""
        response = await self.deployer.post("/api/v1/endpoints", json=body)
        assert response.status_code == 201, response.text
        slug: str = response.json()["slug"]
        return slug

    async def endpoint(self, slug: str) -> dict[str, Any]:
        """The endpoint as the deployer shows it."""
        response = await self.deployer.get(f"/api/v1/endpoints/{slug}")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    async def start_job(self, slug: str, **body: Any) -> str:
        """Submit a job; its id (fails unless it is accepted)."""
        response = await self.client.post(f"/api/v1/endpoints/{slug}/batch-jobs", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    async def job(self, slug: str, job_id: str) -> dict[str, Any]:
        """One job as the API shows it."""
        response = await self.client.get(f"/api/v1/endpoints/{slug}/batch-jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    async def finished(self, slug: str, job_id: str, timeout: float = 120) -> dict[str, Any]:  # noqa: ASYNC109
        """The job once it ended."""

        async def ended() -> dict[str, Any] | None:
            job = await self.job(slug, job_id)
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        return await eventually(ended, within=timeout, what=f"job {job_id} ended")
