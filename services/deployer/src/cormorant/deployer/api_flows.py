"""HTTP routes of flows: store a flow file, start runs, read runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from cormorant.common.lifespan import from_state
from cormorant.deployer.flows import FlowIn, FlowList, FlowOut, FlowService, RunList, RunOut

router = APIRouter(tags=["flows"])


FlowsDep = Annotated[FlowService, Depends(from_state("flows", FlowService))]


@router.post("/api/v1/flows", status_code=201)
async def save_flow(body: FlowIn, service: FlowsDep) -> FlowOut:
    """Store a flow file (YAML text or parsed) under its name; an earlier one is replaced."""
    return await service.save(body)


@router.get("/api/v1/flows")
async def list_flows(service: FlowsDep) -> FlowList:
    """Every flow."""
    return await service.list_flows()


@router.get("/api/v1/flows/{name}")
async def get_flow(name: str, service: FlowsDep) -> FlowOut:
    """One flow and its tasks."""
    return await service.get(name)


@router.post("/api/v1/flows/{name}/runs", status_code=202)
async def start_run(name: str, service: FlowsDep) -> RunOut:
    """Start a run; follow it with GET .../runs/{id}."""
    return await service.start(name)


@router.get("/api/v1/flows/{name}/runs")
async def list_runs(name: str, service: FlowsDep) -> RunList:
    """The flow's latest runs, newest first."""
    return await service.runs(name)


@router.get("/api/v1/flows/{name}/runs/{run_id}")
async def get_run(name: str, run_id: str, service: FlowsDep) -> RunOut:
    """One run: its status and each task's status, output and duration."""
    return await service.run(name, run_id)
