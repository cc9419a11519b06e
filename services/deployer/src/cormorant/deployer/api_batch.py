"""HTTP routes of batch jobs, and their service's start-up."""

from __future__ import annotations

import weakref
from typing import Annotated, cast

import httpx
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.datasets import BlobStore, DatasetStore
from cormorant.common.openapi import error_responses
from cormorant.deployer.batch import (
    BatchJobComparison,
    BatchJobIn,
    BatchJobList,
    BatchJobOut,
    BatchService,
)
from cormorant.deployer.endpoints import EndpointService
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.supervisor import Supervisor

router = APIRouter(tags=["batch jobs"], responses=error_responses(409, 503))
PREFIX = "/api/v1/endpoints/{slug}/batch-jobs"

_SERVICES: weakref.WeakKeyDictionary[EndpointService, BatchService] = weakref.WeakKeyDictionary()


async def start_batch_jobs(
    settings: DeployerSettings,
    sessions: async_sessionmaker[AsyncSession],
    supervisor: Supervisor,
    http: httpx.AsyncClient,
    endpoints: EndpointService,
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
    _SERVICES[endpoints] = service
    return service


def batch_service(endpoints: EndpointService) -> BatchService | None:
    """The batch-job service running beside ``endpoints`` (for flow tasks)."""
    return _SERVICES.get(endpoints)


def _service(request: Request) -> BatchService:
    return cast(BatchService, request.app.state.batch)


BatchDep = Annotated[BatchService, Depends(_service)]


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
