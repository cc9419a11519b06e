"""The triggers of one alerts replica: API store, evaluator and outbox, started together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.alerts.triggers.evaluator import Evaluator
from cormorant.alerts.triggers.flowrun import FlowStarter
from cormorant.alerts.triggers.mail import Mailer
from cormorant.alerts.triggers.metrics import TriggerMetrics
from cormorant.alerts.triggers.outbox import Action, Outbox
from cormorant.alerts.triggers.settings import TriggerSettings
from cormorant.alerts.triggers.store import TriggerStore
from cormorant.alerts.triggers.webhook import WebhookSender
from cormorant.common.db.models import ActionKind


@dataclass(slots=True)
class Triggers:
    """What the API needs: the store, and a way to wake the evaluator after a change."""

    store: TriggerStore
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by API changes; the evaluator waits on it between rounds."""

    def wake(self) -> None:
        """Have the evaluator look at the triggers' schedule again now."""
        self.wakeup.set()


@asynccontextmanager
async def run_triggers(
    settings: TriggerSettings,
    sessions: async_sessionmaker[AsyncSession],
    js: JetStreamContext,
    registry: CollectorRegistry,
) -> AsyncIterator[Triggers]:
    """Evaluate and deliver in the background while the ``with`` block runs."""
    metrics = TriggerMetrics(registry)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    flows = FlowStarter(settings.gateway_url, api_key)
    triggers = Triggers(TriggerStore(sessions, flows.check))
    fired = asyncio.Event()
    stopping = asyncio.Event()
    async with httpx.AsyncClient() as http:
        actions: dict[ActionKind, Action] = {
            ActionKind.EMAIL: Mailer(settings),
            ActionKind.WEBHOOK: WebhookSender(http, settings.webhook_timeout_s),
            ActionKind.FLOW: flows,
        }
        evaluator = Evaluator(
            sessions,
            metrics,
            tick=settings.evaluation_tick_s,
            batch=settings.evaluation_batch,
            max_values=settings.max_values_per_evaluation,
            on_fired=fired,
        )
        outbox = Outbox(
            sessions,
            actions,
            js,
            metrics,
            attempts=settings.delivery_attempts,
            backoff=settings.retry_backoff_s,
            backoff_max=settings.retry_backoff_max_s,
            tick=settings.evaluation_tick_s,
            link_base=settings.gateway_url,
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(evaluator.run(stopping, triggers.wakeup), name="trigger-evaluator")
            for n in range(settings.deliverers):
                tasks.create_task(outbox.run(stopping, fired), name=f"trigger-outbox-{n}")
            try:
                yield triggers
            finally:
                stopping.set()
                triggers.wake()
                fired.set()
