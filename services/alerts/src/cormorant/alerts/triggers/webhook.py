"""The webhook action: a JSON POST signed with HMAC-SHA256 over its body.

Receivers verify ``X-Cormorant-Signature: sha256=<hex>`` with the trigger's secret and may
drop a repeated ``X-Cormorant-Firing`` (a retry after a lost answer carries the same one).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import httpx

from cormorant.alerts.triggers.alert import Alert, DeliveryError

SIGNATURE_HEADER = "X-Cormorant-Signature"
FIRING_HEADER = "X-Cormorant-Firing"
# Answers that may be different on a later try; any other 4xx is the receiver's final word.
_RETRYABLE = frozenset({408, 425, 429})


def sign(secret: str, body: bytes) -> str:
    """The signature header's value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is ``body``'s (constant-time): what a receiver checks."""
    return hmac.compare_digest(sign(secret, body), signature)


@dataclass(slots=True)
class WebhookSender:
    """POSTs firings to their trigger's URL."""

    http: httpx.AsyncClient
    timeout: float

    async def deliver(self, alert: Alert) -> dict[str, Any]:
        """POST the firing; ``DeliveryError`` unless the receiver answers 2xx."""
        if not alert.secret:
            raise DeliveryError("the trigger has no webhook secret", retry=False)
        url = str(alert.action["webhook"])
        body = json.dumps(alert.payload(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(alert.secret, body),
            FIRING_HEADER: str(alert.firing_id),
        }
        try:
            response = await self.http.post(
                url, content=body, headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"POST {url}: {type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return {"status": response.status_code}
        retry = response.status_code >= 500 or response.status_code in _RETRYABLE
        raise DeliveryError(f"POST {url} answered {response.status_code}", retry=retry)
