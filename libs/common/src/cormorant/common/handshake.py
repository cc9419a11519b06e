"""The generation handshake between the deployer and the gateways, over core NATS.

Before the deployer stops the replicas of a version that lost its traffic it asks every
gateway, with one request on ``GENERATION_SUBJECT`` and a reply inbox, which traffic
generation of the endpoint it has applied and how many requests it still has in flight per
version. Each gateway answers with a ``GenerationReport``; the deployer gathers the answers
until they stop coming. Live state, never stored: a gateway that is down routes nothing.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

GENERATION_SUBJECT = "cormorant.gateway.generation"
"""Core NATS subject of the handshake's question (a ``GenerationQuery``)."""


class GenerationQuery(BaseModel):
    """The deployer's question: which generation of ``endpoint`` does each gateway route by?"""

    model_config = ConfigDict(extra="ignore")

    endpoint: str = Field(min_length=1)


class GenerationReport(BaseModel):
    """One gateway's answer."""

    model_config = ConfigDict(extra="ignore")

    gateway: str
    endpoint: str
    generation: int
    """The traffic generation applied; -1 when the gateway does not route the endpoint."""
    in_flight: dict[str, int] = Field(default_factory=dict)
    """Requests in flight per version, on routed and on retired replicas."""
