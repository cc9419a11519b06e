"""What an action is told about a firing, and how it is worded."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SIGNS = {"gt": ">", "lt": "<"}


class DeliveryError(Exception):
    """An action could not be carried out; ``retry`` says whether trying again may help."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(slots=True, frozen=True)
class Alert:
    """One firing of one trigger, with everything its action reports."""

    firing_id: uuid.UUID
    trigger_id: uuid.UUID
    title: str
    severity: str
    endpoint: str
    tag: str
    comparison: str
    threshold: float
    count: int
    values: list[float]
    fired_at: datetime
    action: dict[str, Any]
    secret: str | None
    link: str | None

    @property
    def condition(self) -> str:
        """``accuracy < 0.8``."""
        return f"{self.tag} {SIGNS[self.comparison]} {self.threshold:g}"

    @property
    def subject(self) -> str:
        """One line for an e-mail subject or a chat message."""
        return f"[{self.severity.upper()}] {self.title}: {self.condition} on {self.endpoint}"

    def text(self) -> str:
        """The firing described for a person."""
        values = ", ".join(f"{v:g}" for v in self.values)
        lines = [
            self.subject,
            "",
            f"Endpoint:  {self.endpoint}",
            f"Tag:       {self.tag}",
            f"Condition: {self.condition}",
            f"Severity:  {self.severity}",
            f"Values:    {values} ({self.count} met the condition)",
            f"Fired at:  {self.fired_at.isoformat()}",
            f"Trigger:   {self.trigger_id}",
            f"Firing:    {self.firing_id}",
        ]
        if self.link:
            lines.append(f"Details:   {self.link}")
        return "\n".join(lines) + "\n"

    def payload(self) -> dict[str, Any]:
        """The firing as JSON (the webhook's body, a flow run's ``trigger`` parameter)."""
        return {
            "firing_id": str(self.firing_id),
            "trigger_id": str(self.trigger_id),
            "title": self.title,
            "severity": self.severity,
            "endpoint": self.endpoint,
            "tag": self.tag,
            "comparison": self.comparison,
            "value": self.threshold,
            "count": self.count,
            "values": self.values,
            "fired_at": self.fired_at.isoformat(),
            "link": self.link,
        }
