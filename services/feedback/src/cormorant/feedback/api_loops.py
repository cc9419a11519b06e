"""HTTP routes of feedback loops (behind the gateway, which checks the admin key).

``POST /api/v1/endpoints/{slug}/feedback-loops`` creates one; ``GET`` lists them or shows one
with its runs; ``POST .../{id}/run`` runs it now; ``DELETE .../{id}`` stops it (the spec's
Stop: no run starts after the answer).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends

from cormorant.common.errors import BadRequest
from cormorant.common.lifespan import from_state
from cormorant.feedback.export import OPTIONAL_COLUMNS
from cormorant.feedback.schedule import parse_schedule
from cormorant.feedback.schemas import LoopCreate, LoopDetail, LoopList, LoopOut, RunOut
from cormorant.feedback.state import FeedbackState

router = APIRouter(tags=["feedback loops"])
PREFIX = "/api/v1/endpoints/{slug}/feedback-loops"


StateDep = Annotated[FeedbackState, Depends(from_state("feedback", FeedbackState))]


def _include(include: list[str] | None) -> list[str] | None:
    if include is None:
        return None
    for column in include:
        if column not in OPTIONAL_COLUMNS:
            raise BadRequest(
                f"include: {column!r} is not a column; choose from {', '.join(OPTIONAL_COLUMNS)}"
            )
    if len(set(include)) != len(include):
        raise BadRequest("include: a column is listed twice; name each once")
    return include


@router.post(PREFIX, status_code=201)
async def create_loop(slug: str, body: LoopCreate, state: StateDep) -> LoopOut:
    """Create a loop; it runs at once (now, every) or at its first day and time (on)."""
    schedule = parse_schedule(body.schedule, min_every_s=state.settings.min_every_s)
    loop = await state.loops.create(
        slug, body.dataset, schedule, body.format, _include(body.include)
    )
    state.wake.set()
    return LoopOut.model_validate(loop)


@router.get(PREFIX)
async def list_loops(slug: str, state: StateDep) -> LoopList:
    """The endpoint's loops, each with its state, last run and next run."""
    return LoopList(
        feedback_loops=[LoopOut.model_validate(x) for x in await state.loops.list(slug)]
    )


@router.get("/api/v1/feedback-loops")
async def list_all_loops(state: StateDep) -> LoopList:
    """Every endpoint's loops."""
    return LoopList(feedback_loops=[LoopOut.model_validate(x) for x in await state.loops.list()])


@router.get(PREFIX + "/{loop_id}")
async def get_loop(slug: str, loop_id: uuid.UUID, state: StateDep) -> LoopDetail:
    """One loop with its runs (rows, time range, dataset version, duration), newest first."""
    return LoopDetail.model_validate(await state.loops.get(slug, loop_id))


@router.post(PREFIX + "/{loop_id}/run")
async def run_loop(slug: str, loop_id: uuid.UUID, state: StateDep) -> RunOut:
    """Export what is new now (after a run in progress); 409 if the loop is stopped."""
    await state.loops.id_of(slug, loop_id)
    return RunOut.model_validate(await state.runner.run_now(loop_id))


@router.delete(PREFIX + "/{loop_id}")
async def stop_loop(slug: str, loop_id: uuid.UUID, state: StateDep) -> LoopOut:
    """Stop the loop: a run in progress ends first, none starts after this answer."""
    return LoopOut.model_validate(await state.loops.stop(slug, loop_id))
