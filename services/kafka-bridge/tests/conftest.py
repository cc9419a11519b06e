"""Fixtures of the kafka-bridge tests: fresh topics on the session's broker, replica processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cormorant.kafka_bridge.testing import Stream, create_topics

MODELS = Path(__file__).parent / "models"
PARTITIONS = 3


@pytest.fixture
async def stream(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Stream]:
    """Fresh 3-partition input and output topics and a group of this test's own."""
    tag = uuid.uuid4().hex[:8]
    topics = Stream(kafka_bootstrap, f"in-{tag}", f"out-{tag}", f"orders-{tag}", tmp_path, MODELS)
    await create_topics(kafka_bootstrap, {topics.input: PARTITIONS, topics.output: PARTITIONS})
    try:
        yield topics
    finally:
        for proc in topics.replicas:
            proc.kill()
