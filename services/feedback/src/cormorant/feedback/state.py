"""What the Feedback service's lifespan opens, typed, for its routes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cormorant.common.datasets import DatasetStore
from cormorant.feedback.loops import Loops
from cormorant.feedback.runs import Runner
from cormorant.feedback.settings import FeedbackSettings


@dataclass(slots=True)
class FeedbackState:
    """The datasets store, the loops, the runner and the scheduler's wake-up call."""

    settings: FeedbackSettings
    datasets: DatasetStore
    loops: Loops
    runner: Runner
    wake: asyncio.Event = field(default_factory=asyncio.Event)
