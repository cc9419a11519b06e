"""``client.triggers``: metric triggers that e-mail, call a webhook or run a flow."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cormorant.sdk.client import Client


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


class Triggers:
    """Triggers: ``client.triggers.create("iris", tag="accuracy", comparison="lt", value=0.8,
    every="1m", min_events=3, action={"email": ["team@example.org"]})``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        slug: str,
        *,
        tag: str,
        comparison: str,
        value: float,
        action: dict[str, Any],
        every: str | float = "1m",
        min_events: int = 1,
        title: str | None = None,
        severity: str = "warning",
        cooldown: str | float | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        """A trigger on the endpoint's metric ``tag``; ``comparison`` is ``"gt"`` or ``"lt"``.
        The answer's ``warnings`` name what may keep it from firing; a webhook's ``secret`` is
        shown only here."""
        sign = ">" if comparison == "gt" else "<"
        body = _drop_none(
            {
                "title": title or f"{tag} {sign} {value:g}",
                "severity": severity,
                "tag": tag,
                "comparison": comparison,
                "value": value,
                "every": every,
                "min_events": min_events,
                "cooldown": cooldown,
                "action": action,
                "enabled": enabled,
            }
        )
        path = f"/api/v1/endpoints/{slug}/triggers"
        result: dict[str, Any] = self._client.request("POST", path, json=body)
        return result

    def list(self, slug: str | None = None) -> list[dict[str, Any]]:
        """Every trigger, or the endpoint's, with its state."""
        path = f"/api/v1/endpoints/{slug}/triggers" if slug else "/api/v1/triggers"
        result: list[dict[str, Any]] = self._client.request("GET", path)["triggers"]
        return result

    def get(self, trigger_id: str) -> dict[str, Any]:
        """One trigger, its state and last evaluation."""
        result: dict[str, Any] = self._client.request("GET", f"/api/v1/triggers/{trigger_id}")
        return result

    def update(self, trigger_id: str, **fields: Any) -> dict[str, Any]:
        """Change the given fields (``title``, ``value``, ``every``, ``action``, ...)."""
        path = f"/api/v1/triggers/{trigger_id}"
        result: dict[str, Any] = self._client.request("PATCH", path, json=fields)
        return result

    def enable(self, trigger_id: str) -> dict[str, Any]:
        """Evaluate the trigger again, counting values logged from now on."""
        return self.update(trigger_id, enabled=True)

    def disable(self, trigger_id: str) -> dict[str, Any]:
        """Stop evaluating the trigger (its settings and firings are kept)."""
        return self.update(trigger_id, enabled=False)

    def delete(self, trigger_id: str) -> None:
        """Remove the trigger and its firings."""
        self._client.request("DELETE", f"/api/v1/triggers/{trigger_id}")

    def firings(self, trigger_id: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """The trigger's firings, newest first, each with its delivery status."""
        path = f"/api/v1/triggers/{trigger_id}/firings"
        result = self._client.request("GET", path, params={"limit": limit})
        firings: builtins.list[dict[str, Any]] = result["firings"]
        return firings
