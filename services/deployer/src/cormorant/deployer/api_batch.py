"""HTTP routes of batch jobs, and their service's start-up."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.datasets import BlobStore, DatasetStore
from cormorant.common.lifespan import from_state
from cormorant.deployer.batch import (
    BatchJobComparison,
    BatchJobIn,
    BatchJobList,
    BatchJobOut,
    BatchService,
)
from cormorant.deployer.fleet.supervisor import Supervisor
from cormorant.deployer.settings import DeployerSettings

router = APIRouter(tags=["batch jobs"])
PREFIX = "/api/v1/endpoints/{slug}/batch-jobs"


async def start_batch_jobs(
    settings: DeployerSettings,
    sessions: async_sessionmaker[AsyncSession],
    supervisor: Supervisor,
    http: httpx.AsyncClient,
) -> BatchService:
    """The batch-job service, once jobs a previous deployer left are marked failed."""
    blobs = BlobStore(
        settings.resolved_datasets_url(), storage_options=settings.datasets_storage_options
    )
    await blobs.prepare()
    service = BatchService(
        settings=settings,
        sessions=sessions,
        supervisor=supervisor,
        datasets=DatasetStore(sessions, blobs),
        http=http,
    )
    await service.recover()
    return service


BatchDep = Annotated[BatchService, Depends(from_state("batch", BatchService))]


@router.post(PREFIX, status_code=202)
async def create_job(slug: str, body: BatchJobIn, service: BatchDep) -> BatchJobOut:
    """Start a job: each row of ``input_file`` predicted, the output synced to ``dataset``."""
    return await service.create(slug, body)


@router.get(PREFIX)
async def list_jobs(slug: str, service: BatchDep) -> BatchJobList:
    """The endpoint's batch jobs, newest first."""
    return await service.jobs(slug)


@router.get(PREFIX + "/compare")
async def compare_jobs(
    slug: str,
    service: BatchDep,
    ids: Annotated[str, Query(description="Job ids separated by commas.")] = "",
    metrics: Annotated[
        str, Query(description="Custom metric keys (logged by predict) separated by commas.")
    ] = "",
) -> BatchJobComparison:
    """The jobs' figures side by side, and the custom metrics predict logged during each."""
    return await service.compare(slug, _split(ids), _split(metrics))


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@router.get(PREFIX + "/{job_id}")
async def get_job(slug: str, job_id: str, service: BatchDep) -> BatchJobOut:
    """One job with its live progress."""
    return await service.get(slug, job_id)


@router.delete(PREFIX + "/{job_id}")
async def cancel_job(slug: str, job_id: str, service: BatchDep) -> BatchJobOut:
    """Cancel a pending or running job; nothing is written."""
    return await service.cancel(slug, job_id)
