"""When a feedback loop runs: once now, every fixed interval, or on days at a local time.

``on`` schedules are matched by croniter on the zone's wall clock and then placed on the
time line with ``zoneinfo``, which makes them DST-correct by construction: a time the clock
skips (02:30 on the spring-forward night) runs when the clock has jumped past it, by the
same offset (03:30 summer time); a time the clock passes twice (02:30 on the fall-back
night) runs once, at its first occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter  # type: ignore[import-untyped]

from cormorant.common.db.models import ScheduleKind
from cormorant.common.errors import BadRequest

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EVERY = re.compile(r"^(\d+)\s*([smhd])$")
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
# croniter walks at most this many matches looking for one that exists on the time line.
_MAX_STEPS = 16


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule; ``expr`` is its canonical text, as stored and shown."""

    kind: ScheduleKind
    every: timedelta | None = None
    days: tuple[str, ...] = ()
    at: time | None = None
    timezone: str = "UTC"

    @property
    def expr(self) -> str | None:
        """``15m`` for every, ``mon,thu 02:30 Europe/Berlin`` for on, None for now."""
        if self.kind is ScheduleKind.EVERY:
            assert self.every is not None
            return format_interval(self.every)
        if self.kind is ScheduleKind.AT:
            assert self.at is not None
            return f"{','.join(self.days)} {self.at:%H:%M} {self.timezone}"
        return None

    def to_json(self) -> dict[str, Any]:
        """The API shape: ``{"now": true}``, ``{"every": "15m"}`` or ``{"on": {...}}``."""
        if self.kind is ScheduleKind.EVERY:
            return {"every": self.expr}
        if self.kind is ScheduleKind.AT:
            assert self.at is not None
            return {
                "on": {
                    "days": list(self.days),
                    "time": f"{self.at:%H:%M}",
                    "timezone": self.timezone,
                }
            }
        return {"now": True}

    def next_after(self, after: datetime, anchor: datetime) -> datetime | None:
        """The first due time strictly after ``after``; ``every`` counts from ``anchor``."""
        if self.kind is ScheduleKind.NOW:
            return None
        if self.kind is ScheduleKind.EVERY:
            assert self.every is not None
            if after < anchor:
                return anchor
            periods = (after - anchor) // self.every + 1
            return anchor + periods * self.every
        return self._next_on(after)

    def _next_on(self, after: datetime) -> datetime:
        assert self.at is not None
        zone = ZoneInfo(self.timezone)
        wall = after.astimezone(zone).replace(tzinfo=None)
        # Matching naive wall-clock times keeps croniter's own DST handling out of the way;
        # zoneinfo (fold=0) then says where each lands, skipped and repeated hours included.
        rule = f"{self.at.minute} {self.at.hour} * * {','.join(self.days)}"
        # One day back: an instant in a repeated hour has a wall time that may already be
        # past a due time still ahead of it on the time line.
        matches = croniter(rule, wall - timedelta(days=1))
        for _ in range(_MAX_STEPS):
            candidate: datetime = matches.get_next(datetime)
            due = candidate.replace(tzinfo=zone).astimezone(UTC)
            if due > after:
                return due
        raise AssertionError(f"no due time found for {self.expr} after {after}")


def format_interval(every: timedelta) -> str:
    """``timedelta`` as the largest whole unit: ``15m``, ``6h``, ``1d``, ``90s``."""
    seconds = int(every.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_every(value: str, *, min_seconds: float, field: str = "schedule.every") -> timedelta:
    """``15m``/``6h``/``1d`` (also ``s``) as a timedelta of at least ``min_seconds``."""
    match = _EVERY.match(value.strip().lower()) if isinstance(value, str) else None
    if match is None:
        raise BadRequest(
            f"{field}: {value!r} is not an interval; write a number and a unit, "
            "e.g. '15m', '6h' or '1d' (units: s, m, h, d)"
        )
    every = timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    if every.total_seconds() < min_seconds:
        raise BadRequest(
            f"{field}: {value!r} is shorter than the shortest interval allowed, "
            f"{format_interval(timedelta(seconds=min_seconds))}"
        )
    return every


def parse_days(days: Any, *, field: str = "schedule.on.days") -> tuple[str, ...]:
    """Weekday names (``mon``…``sun``, full names too) in week order, each once."""
    if isinstance(days, str):
        days = [d for d in re.split(r"[,\s]+", days) if d]
    if not isinstance(days, list) or not days:
        raise BadRequest(f"{field}: name at least one day, e.g. ['mon', 'thu']")
    found = set()
    for day in days:
        short = str(day).strip().lower()[:3]
        if short not in DAYS or str(day).strip().lower() not in (short, _full(short)):
            raise BadRequest(f"{field}: {day!r} is not a day; use {', '.join(DAYS)}")
        found.add(short)
    return tuple(d for d in DAYS if d in found)


def _full(short: str) -> str:
    return {
        "mon": "monday",
        "tue": "tuesday",
        "wed": "wednesday",
        "thu": "thursday",
        "fri": "friday",
        "sat": "saturday",
        "sun": "sunday",
    }[short]


def parse_time(value: Any, *, field: str = "schedule.on.time") -> time:
    """``HH:MM`` (24-hour clock)."""
    match = _TIME.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise BadRequest(f"{field}: {value!r} is not a time of day; write HH:MM, e.g. '02:30'")
    return time(int(match[1]), int(match[2]))


def parse_timezone(value: Any, *, field: str = "schedule.on.timezone") -> str:
    """An IANA zone name (``Europe/Berlin``, ``UTC``)."""
    if not isinstance(value, str) or not value or value not in _zones():
        raise BadRequest(
            f"{field}: {value!r} is not a time zone; use an IANA name such as "
            "'Europe/Berlin', 'America/New_York' or 'UTC'"
        )
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadRequest(f"{field}: {value!r} is not a time zone") from exc
    return value


_ZONES: frozenset[str] | None = None


def _zones() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones()) | {"UTC"}
    return _ZONES


def parse_schedule(raw: Any, *, min_every_s: float) -> Schedule:
    """The API's ``schedule`` object as a ``Schedule``; ``BadRequest`` naming the field."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise BadRequest(
            "schedule: give exactly one of {'now': true}, {'every': '15m'} or "
            "{'on': {'days': ['mon'], 'time': '02:30', 'timezone': 'Europe/Berlin'}}"
        )
    ((kind, value),) = raw.items()
    if kind == "now":
        if value is not True:
            raise BadRequest("schedule.now: must be true")
        return Schedule(ScheduleKind.NOW)
    if kind == "every":
        return Schedule(ScheduleKind.EVERY, every=parse_every(value, min_seconds=min_every_s))
    if kind == "on":
        if isinstance(value, str):
            value = parse_on_text(value)
        if not isinstance(value, dict):
            raise BadRequest("schedule.on: give {'days': [...], 'time': 'HH:MM', 'timezone': ...}")
        unknown = set(value) - {"days", "time", "timezone"}
        if unknown:
            raise BadRequest(
                f"schedule.on: unknown field(s) {sorted(unknown)}; "
                "the fields are days, time, timezone"
            )
        if "time" not in value:
            raise BadRequest("schedule.on.time: missing; write HH:MM, e.g. '02:30'")
        return Schedule(
            ScheduleKind.AT,
            days=parse_days(value.get("days")),
            at=parse_time(value["time"]),
            timezone=parse_timezone(value.get("timezone", "UTC")),
        )
    raise BadRequest(f"schedule: unknown kind {kind!r}; use 'now', 'every' or 'on'")


def parse_on_text(text: str) -> dict[str, Any]:
    """``"mon,thu 02:30 Europe/Berlin"`` (the CLI's ``--on``) as the API's ``on`` object."""
    parts = text.split()
    if len(parts) not in (2, 3):
        raise BadRequest(
            f"schedule.on: {text!r} is not 'DAYS HH:MM [TIMEZONE]', e.g. 'mon,thu 02:30 UTC'"
        )
    return {
        "days": parts[0].split(","),
        "time": parts[1],
        "timezone": parts[2] if len(parts) == 3 else "UTC",
    }


def stored_schedule(kind: ScheduleKind, expr: str | None) -> Schedule:
    """The schedule a loop row holds (``schedule_kind``, ``schedule_expr``)."""
    if kind is ScheduleKind.NOW:
        return Schedule(kind)
    assert expr is not None
    if kind is ScheduleKind.EVERY:
        return Schedule(kind, every=parse_every(expr, min_seconds=0))
    on = parse_on_text(expr)
    return Schedule(
        kind,
        days=parse_days(on["days"]),
        at=parse_time(on["time"]),
        timezone=parse_timezone(on["timezone"]),
    )
