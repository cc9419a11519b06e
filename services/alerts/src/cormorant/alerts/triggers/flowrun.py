"""The flow action: a run of a stored flow, started through the platform's public API.

The flows live behind ``/api/v1/flows`` wherever the platform serves them; going through the
SDK keeps this action independent of which service that is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from cormorant.alerts.triggers.alert import Alert, DeliveryError
from cormorant.common.errors import BadRequest
from cormorant.sdk import Client
from cormorant.sdk.client import CormorantAPIError

_NOT_CONFIGURED = (
    "flow actions need the platform's URL and an admin key: set CORMORANT_ALERTS_GATEWAY_URL"
    " and CORMORANT_ALERTS_API_KEY"
)


@dataclass(slots=True)
class FlowStarter:
    """Checks flow names and starts runs with an admin key."""

    url: str | None
    api_key: str | None

    def _client(self) -> Client:
        if not self.url or not self.api_key:
            raise BadRequest(f"action.flow: {_NOT_CONFIGURED}")
        return Client(self.url, self.api_key)

    async def check(self, name: str) -> None:
        """``BadRequest`` naming the field if no flow is called ``name``."""

        def look_up() -> None:
            with self._client() as client:
                client.request("GET", f"/api/v1/flows/{name}")

        try:
            await asyncio.to_thread(look_up)
        except CormorantAPIError as exc:
            if exc.status_code == 404:
                raise BadRequest(
                    f"action.flow: no flow {name!r}; store it first (POST /api/v1/flows)"
                ) from None
            raise BadRequest(f"action.flow: could not check flow {name!r}: {exc}") from None
        except (OSError, httpx.HTTPError) as exc:
            raise BadRequest(f"action.flow: could not check flow {name!r}: {exc}") from None

    async def deliver(self, alert: Alert) -> dict[str, Any]:
        """Start a run of the action's flow; its ``params`` and the firing go with it."""
        if not self.url or not self.api_key:
            raise DeliveryError(_NOT_CONFIGURED, retry=False)
        name = str(alert.action["flow"])
        body = {"params": alert.action.get("params", {}), "trigger": alert.payload()}

        def start() -> dict[str, Any]:
            with Client(self.url, self.api_key) as client:
                run: dict[str, Any] = client.request(
                    "POST", f"/api/v1/flows/{name}/runs", json=body
                )
                return run

        try:
            run = await asyncio.to_thread(start)
        except CormorantAPIError as exc:
            retry = exc.status_code >= 500 or exc.status_code in (408, 429)
            raise DeliveryError(f"flow {name}: {exc}", retry=retry) from exc
        except (OSError, httpx.HTTPError) as exc:
            raise DeliveryError(f"flow {name}: {exc}") from exc
        return {"flow": name, "run_id": run.get("id"), "status": run.get("status")}
