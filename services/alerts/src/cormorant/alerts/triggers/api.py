"""HTTP routes of the triggers API (behind the gateway, which checks the admin key).

Handlers only translate HTTP to ``TriggerStore`` calls; errors are ``CormorantError``s
rendered by the platform's one handler.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from cormorant.alerts.triggers.schemas import (
    FiringList,
    TriggerIn,
    TriggerList,
    TriggerOut,
    TriggerPatch,
)
from cormorant.alerts.triggers.service import Triggers

router = APIRouter(prefix="/api/v1", tags=["triggers"])


def _triggers(request: Request) -> Triggers:
    triggers = request.state.triggers
    assert isinstance(triggers, Triggers)
    return triggers


TriggersDep = Annotated[Triggers, Depends(_triggers)]


@router.post("/endpoints/{slug}/triggers", status_code=201)
async def create_trigger(slug: str, body: TriggerIn, triggers: TriggersDep) -> TriggerOut:
    """A trigger on one of the endpoint's logged metrics; ``warnings`` says what may keep it
    from firing (a tag the endpoint never logged), ``secret`` is a webhook's signing key."""
    created = await triggers.store.create(slug, body)
    triggers.wake()
    return created


@router.get("/endpoints/{slug}/triggers")
async def list_endpoint_triggers(slug: str, triggers: TriggersDep) -> TriggerList:
    """The endpoint's triggers with their state, oldest first."""
    return TriggerList(triggers=await triggers.store.triggers(slug))


@router.get("/triggers")
async def list_triggers(triggers: TriggersDep) -> TriggerList:
    """Every trigger with its state, oldest first."""
    return TriggerList(triggers=await triggers.store.triggers())


@router.get("/triggers/{trigger_id}")
async def get_trigger(trigger_id: str, triggers: TriggersDep) -> TriggerOut:
    """One trigger, its state and its last evaluation."""
    return await triggers.store.get(trigger_id)


@router.patch("/triggers/{trigger_id}")
async def update_trigger(trigger_id: str, body: TriggerPatch, triggers: TriggersDep) -> TriggerOut:
    """Change a trigger, or enable (re-armed from now) or disable it."""
    updated = await triggers.store.update(trigger_id, body)
    triggers.wake()
    return updated


@router.delete("/triggers/{trigger_id}", status_code=204)
async def delete_trigger(trigger_id: str, triggers: TriggersDep) -> Response:
    """Remove a trigger with its state and firings."""
    await triggers.store.delete(trigger_id)
    return Response(status_code=204)


@router.get("/triggers/{trigger_id}/firings")
async def list_firings(
    trigger_id: str,
    triggers: TriggersDep,
    limit: Annotated[int, Query(description="At most this many, newest first.")] = 100,
) -> FiringList:
    """The trigger's firings, newest first, each with where its action stands."""
    return FiringList(firings=await triggers.store.firings(trigger_id, limit))
