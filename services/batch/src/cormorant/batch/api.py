"""HTTP routes of batch jobs (behind the gateway, at the paths the deployer once served)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from cormorant.batch.jobs import BatchService
from cormorant.batch.schemas import BatchJobComparison, BatchJobIn, BatchJobList, BatchJobOut
from cormorant.common.openapi import error_responses

router = APIRouter(tags=["batch jobs"], responses=error_responses(409, 503))
PREFIX = "/api/v1/endpoints/{slug}/batch-jobs"


def _service(request: Request) -> BatchService:
    # The lifespan's state (``app.State``), copied into every request's.
    jobs = request.state.jobs
    assert isinstance(jobs, BatchService)
    return jobs


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
