"""Request and response bodies of the triggers API."""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cormorant.alerts.triggers.intervals import format_interval, parse_interval
from cormorant.common.db.models import ActionKind, Trigger, TriggerFiring, TriggerState

SeverityName = Literal["info", "warning", "critical"]
ComparisonName = Literal["gt", "lt"]
"""``gt``: fire on values above ``value``; ``lt``: on values below it."""

# Deliberately loose (one @, a dot in the domain, no spaces): mail servers are the judge,
# this only catches typing mistakes before a firing would fail.
_EMAIL_RE = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")
_FLOW_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
MIN_SECRET_LENGTH = 16


def _email(addresses: Any) -> dict[str, Any]:
    if isinstance(addresses, str):
        addresses = [addresses]
    if not isinstance(addresses, list) or not addresses:
        raise ValueError("email: give a list of one or more addresses")
    for address in addresses:
        if not isinstance(address, str) or _EMAIL_RE.fullmatch(address) is None:
            raise ValueError(f"email: {address!r} is not an e-mail address")
    return {"email": list(addresses)}


def _webhook(url: Any, secret: Any) -> dict[str, Any]:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook: {url!r} is not an http(s) URL")
    action: dict[str, Any] = {"webhook": url}
    if secret is not None:
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"secret: use at least {MIN_SECRET_LENGTH} characters")
        action["secret"] = secret
    return action


def _flow(name: Any, params: Any) -> dict[str, Any]:
    if not isinstance(name, str) or _FLOW_NAME_RE.fullmatch(name) is None:
        raise ValueError(f"flow: {name!r} is not a flow name (letters, digits, '-', '_')")
    if not isinstance(params, dict):
        raise ValueError("params: must be a JSON object")
    return {"flow": name, "params": params}


def parse_action(value: Any) -> dict[str, Any]:
    """The action as stored: exactly one of ``email``, ``webhook`` (with an optional
    ``secret``) or ``flow`` (with optional ``params``); ValueError naming the bad field."""
    if not isinstance(value, dict):
        raise ValueError('give {"email": [...]}, {"webhook": URL} or {"flow": NAME}')
    kinds = [kind for kind in ActionKind if kind.value in value]
    if len(kinds) != 1:
        raise ValueError('give exactly one of "email", "webhook" or "flow"')
    kind = kinds[0]
    allowed = {"email": {"email"}, "webhook": {"webhook", "secret"}, "flow": {"flow", "params"}}
    unknown = sorted(set(value) - allowed[kind.value])
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a field of a {kind.value} action")
    if kind is ActionKind.EMAIL:
        return _email(value["email"])
    if kind is ActionKind.WEBHOOK:
        return _webhook(value["webhook"], value.get("secret"))
    return _flow(value["flow"], value.get("params", {}))


def action_kind(action: dict[str, Any]) -> ActionKind:
    """Which action a parsed action is."""
    return next(kind for kind in ActionKind if kind.value in action)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class TriggerIn(BaseModel):
    """A new trigger on one of the endpoint's logged metrics."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200, examples=["Accuracy dropped"])
    severity: SeverityName = "warning"
    tag: str = Field(
        min_length=1, max_length=200, description="The metric key given to log_metric, exactly."
    )
    comparison: ComparisonName
    value: float = Field(description="The threshold the metric's values are compared with.")
    every: str | int | float = Field(
        description="How often to evaluate: seconds, or '30s', '5m', '1h'; at least 1 s.",
        examples=["30s"],
    )
    min_events: int = Field(
        default=1, ge=1, description="Values meeting the condition needed to fire."
    )
    cooldown: str | int | float | None = Field(
        default=None,
        description="Wait after a firing before the trigger re-arms; default every × min_events.",
    )
    action: dict[str, Any] = Field(
        description='{"email": [addresses]} | {"webhook": URL, "secret"?: str} '
        '| {"flow": NAME, "params"?: {...}}',
        examples=[{"email": ["team@example.org"]}],
    )
    enabled: bool = True

    _value = field_validator("value")(_finite)

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | int | float) -> int:
        return parse_interval(value)

    @field_validator("cooldown")
    @classmethod
    def _cooldown(cls, value: str | int | float | None) -> int | None:
        return None if value is None else parse_interval(value, minimum=0)

    @field_validator("action")
    @classmethod
    def _action(cls, value: dict[str, Any]) -> dict[str, Any]:
        return parse_action(value)

    @property
    def every_seconds(self) -> int:
        """``every`` in seconds (the validator has turned it into a number)."""
        return int(self.every)


class TriggerPatch(BaseModel):
    """Changes to a trigger; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=200)
    severity: SeverityName | None = None
    tag: str | None = Field(default=None, min_length=1, max_length=200)
    comparison: ComparisonName | None = None
    value: float | None = None
    every: str | int | float | None = None
    min_events: int | None = Field(default=None, ge=1)
    cooldown: str | int | float | None = None
    action: dict[str, Any] | None = None
    enabled: bool | None = None

    @field_validator("value")
    @classmethod
    def _value(cls, value: float | None) -> float | None:
        return None if value is None else _finite(value)

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | int | float | None) -> int | None:
        return None if value is None else parse_interval(value)

    @field_validator("cooldown")
    @classmethod
    def _cooldown(cls, value: str | int | float | None) -> int | None:
        return None if value is None else parse_interval(value, minimum=0)

    @field_validator("action")
    @classmethod
    def _action(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else parse_action(value)


COMPARISON_NAMES = {">": "gt", "<": "lt"}


class StateOut(BaseModel):
    """Where the trigger's evaluation stands."""

    streak: int = Field(description="Values that met the condition since it last reset.")
    cooldown_until: datetime | None
    next_evaluation_at: datetime
    last_evaluated_at: datetime | None
    evaluations: int
    last_evaluation: dict[str, Any]


class TriggerOut(BaseModel):
    """A trigger, its state and its last evaluation."""

    id: uuid.UUID
    endpoint: str
    title: str
    severity: SeverityName
    tag: str
    comparison: ComparisonName
    value: float
    every: str
    every_seconds: int
    min_events: int
    cooldown_seconds: int
    action: dict[str, Any] = Field(description="The action; a webhook's secret is not shown.")
    enabled: bool
    created_at: datetime
    updated_at: datetime
    last_fired_at: datetime | None
    state: StateOut | None
    warnings: list[str] = Field(
        default_factory=list, description="What may keep the trigger from ever firing."
    )
    secret: str | None = Field(
        default=None,
        description="A webhook's HMAC-SHA256 key: in the creation answer only, keep it.",
    )

    @classmethod
    def of(cls, trigger: Trigger, slug: str, state: TriggerState | None) -> TriggerOut:
        """The API view of a stored trigger."""
        action = {k: v for k, v in trigger.action_config.items() if k != "secret"}
        return cls(
            id=trigger.id,
            endpoint=slug,
            title=trigger.name,
            severity=trigger.severity.value,
            tag=trigger.metric,
            comparison="gt" if trigger.op.value == ">" else "lt",
            value=trigger.threshold,
            every=format_interval(trigger.every_seconds),
            every_seconds=trigger.every_seconds,
            min_events=trigger.min_events,
            cooldown_seconds=cooldown_seconds(trigger),
            action=action,
            enabled=trigger.enabled,
            created_at=trigger.created_at,
            updated_at=trigger.updated_at,
            last_fired_at=trigger.last_fired_at,
            state=None
            if state is None
            else StateOut(
                streak=state.streak,
                cooldown_until=state.cooldown_until,
                next_evaluation_at=state.next_evaluation_at,
                last_evaluated_at=state.last_evaluated_at,
                evaluations=state.evaluations,
                last_evaluation=state.last_evaluation,
            ),
        )


def cooldown_seconds(trigger: Trigger) -> int:
    """The trigger's cool-down: its own, else every × min_events."""
    if trigger.cooldown_seconds is not None:
        return trigger.cooldown_seconds
    return trigger.every_seconds * trigger.min_events


class TriggerList(BaseModel):
    """Triggers, oldest first."""

    triggers: list[TriggerOut]


class FiringOut(BaseModel):
    """One firing and where its action stands."""

    id: uuid.UUID
    trigger_id: uuid.UUID
    fired_at: datetime
    status: Literal["pending", "delivered", "failed"]
    action: str
    count: int
    values: list[float]
    attempts: int
    announced: bool = Field(description="Whether its AlertFired event is on NATS.")
    delivered_at: datetime | None
    error: str | None
    result: dict[str, Any]

    @classmethod
    def of(cls, firing: TriggerFiring) -> FiringOut:
        """The API view of a stored firing."""
        return cls(
            id=firing.id,
            trigger_id=firing.trigger_id,
            fired_at=firing.fired_at,
            status=firing.status.value,
            action=firing.action,
            count=firing.count,
            values=[float(v) for v in firing.values],
            attempts=firing.attempts,
            announced=firing.announced,
            delivered_at=firing.delivered_at,
            error=firing.error,
            result=firing.result,
        )


class FiringList(BaseModel):
    """A trigger's firings, newest first."""

    firings: list[FiringOut]
