"""The filters the logs, the CSV export and the charts share, and the keyset cursor."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query

from cormorant.common.errors import BadRequest
from cormorant.predictlog.database import version_number

MAX_QUERY_LENGTH = 200

_STATUS_CLASS = re.compile(r"^([1-5])xx$")
_STATUS_WORDS = {"ok": (100, 399), "error": (400, 599)}


@dataclass(slots=True, frozen=True)
class LogFilters:
    """Which predictions of an endpoint a request is about."""

    since: datetime | None = None
    until: datetime | None = None
    version: int | None = None
    status: tuple[int, int] | None = None
    """Inclusive range of HTTP statuses."""
    q: str | None = None
    shadow: bool | None = None
    """Only the shadow version's answers to mirrored requests (True), only live ones (False)."""


@dataclass(slots=True)
class SQL:
    """A WHERE clause under construction with its positional arguments."""

    clauses: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def arg(self, value: Any) -> str:
        """The placeholder of ``value``, added to the arguments."""
        self.args.append(value)
        return f"${len(self.args)}"

    def where(self) -> str:
        """``WHERE`` and the clauses joined with ``AND``."""
        return "WHERE " + " AND ".join(self.clauses)


def parse_time(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 date-time (UTC when it names no offset); ``BadRequest`` if it is not one."""
    if value is None or value == "":
        return None
    text = value.strip()
    for candidate in (text, _restore_plus(text)):
        try:
            moment = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    raise BadRequest(
        f"{name} must be an ISO 8601 date-time such as 2030-01-02T03:04:05Z, not {value!r}"
    )


def _restore_plus(text: str) -> str:
    # An unencoded "+01:00" in a query string arrives as " 01:00".
    head, sep, tail = text.rpartition(" ")
    return f"{head}+{tail}" if sep and "T" in head else text


def parse_version(value: str | None) -> int | None:
    """A version number (``3`` or ``v3``); ``BadRequest`` for anything else."""
    if value is None or value == "":
        return None
    number = version_number(value.strip())
    if number is None:
        raise BadRequest(f"version must be a version number such as 3, not {value!r}")
    return number


def parse_status(value: str | None) -> tuple[int, int] | None:
    """A status code (``500``), a class (``5xx``), ``ok`` (< 400) or ``error`` (>= 400)."""
    if value is None or value == "":
        return None
    text = value.strip().lower()
    if text in _STATUS_WORDS:
        return _STATUS_WORDS[text]
    if (match := _STATUS_CLASS.match(text)) is not None:
        base = int(match[1]) * 100
        return base, base + 99
    if text.isascii() and text.isdigit() and 100 <= int(text) <= 599:
        return int(text), int(text)
    raise BadRequest(
        f"status must be an HTTP status (200), a class (2xx, 4xx, 5xx), ok or error, not {value!r}"
    )


def parse_shadow(value: str | None) -> bool | None:
    """``true`` (only shadow answers) or ``false`` (only live ones); ``BadRequest`` otherwise."""
    if value is None or value == "":
        return None
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise BadRequest(
        f"shadow must be true (only the shadow version's answers) or false (only live ones), "
        f"not {value!r}"
    )


def log_filters(
    since: Annotated[
        str | None, Query(description="From this instant (ISO 8601), inclusive.")
    ] = None,
    until: Annotated[
        str | None, Query(description="Up to this instant (ISO 8601), exclusive.")
    ] = None,
    version: Annotated[str | None, Query(description="Only this model version.")] = None,
    status: Annotated[
        str | None, Query(description="An HTTP status, a class such as 5xx, ok or error.")
    ] = None,
    q: Annotated[str | None, Query(description="Text found in the input, output or error.")] = None,
    shadow: Annotated[
        str | None,
        Query(description="true: only shadow answers to mirrored requests; false: only live."),
    ] = None,
) -> LogFilters:
    """The filters of a logs request, validated."""
    start, end = parse_time("since", since), parse_time("until", until)
    if start is not None and end is not None and start >= end:
        raise BadRequest("since must be earlier than until")
    if q is not None and len(q) > MAX_QUERY_LENGTH:
        raise BadRequest(f"q is longer than {MAX_QUERY_LENGTH} characters")
    if q is not None and "\x00" in q:
        raise BadRequest("q must not contain NUL characters")
    return LogFilters(
        since=start,
        until=end,
        version=parse_version(version),
        status=parse_status(status),
        q=q or None,
        shadow=parse_shadow(shadow),
    )


LogFiltersDep = Annotated[LogFilters, Depends(log_filters)]


def prediction_filter(filters: LogFilters, endpoint_id: uuid.UUID) -> SQL:
    """The WHERE clause selecting the predictions of ``endpoint_id`` that ``filters`` keeps."""
    sql = SQL()
    sql.clauses.append(f"endpoint_id = {sql.arg(endpoint_id)}")
    if filters.since is not None:
        sql.clauses.append(f"received_at >= {sql.arg(filters.since)}")
    if filters.until is not None:
        sql.clauses.append(f"received_at < {sql.arg(filters.until)}")
    if filters.version is not None:
        sql.clauses.append(f"version = {sql.arg(filters.version)}")
    if filters.status is not None:
        low, high = filters.status
        if low == high:
            sql.clauses.append(f"status = {sql.arg(low)}")
        else:
            sql.clauses.append(f"status BETWEEN {sql.arg(low)} AND {sql.arg(high)}")
    if filters.shadow is not None:
        sql.clauses.append("shadow" if filters.shadow else "NOT shadow")
    if filters.q is not None:
        pattern = sql.arg(f"%{escape_like(filters.q)}%")
        sql.clauses.append(
            f"(input::text ILIKE {pattern} OR output::text ILIKE {pattern}"
            f" OR error ILIKE {pattern})"
        )
    return sql


def escape_like(text: str) -> str:
    """``text`` matched literally by LIKE (its wildcards and escape character escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def after(sql: SQL, cursor: tuple[datetime, str], order: Literal["asc", "desc"]) -> None:
    """Keep the rows after ``cursor`` in ``order`` of ``(received_at, request_id)``."""
    op = "<" if order == "desc" else ">"
    sql.clauses.append(
        f"(received_at, request_id) {op} ({sql.arg(cursor[0])}, {sql.arg(cursor[1])})"
    )


def encode_cursor(received_at: datetime, request_id: str) -> str:
    """The opaque cursor of the row after which the next page starts."""
    raw = json.dumps([received_at.isoformat(), request_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor from ``encode_cursor`` names; ``BadRequest`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, request_id = json.loads(raw)
        received_at = datetime.fromisoformat(moment)
        if received_at.tzinfo is None or not isinstance(request_id, str):
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error):
        raise BadRequest("cursor is not one this API returned (use next_cursor as given)") from None
    return received_at, request_id
