"""Feedback loops in PostgreSQL: create, list, show with run history, stop."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cormorant.common.db.models import ExportFormat, ScheduleKind
from cormorant.common.errors import NotFound
from cormorant.feedback.export import DEFAULT_INCLUDE
from cormorant.feedback.runs import Clock, utc_now
from cormorant.feedback.schedule import Schedule, stored_schedule

RUN_HISTORY = 100
"""Runs shown with one loop, newest first."""

_LOOP = (
    "SELECT l.id, e.slug AS endpoint, d.name AS dataset, l.schedule_kind, l.schedule_expr,"
    " l.format, l.include, l.enabled, l.last_run_at, l.next_run_at, l.created_at, l.stopped_at,"
    " r.id AS run_id, r.trigger AS run_trigger, r.status AS run_status, r.rows AS run_rows,"
    " r.first_received_at AS run_first, r.last_received_at AS run_last,"
    " r.dataset_version AS run_version, r.duration_s AS run_duration, r.error AS run_error,"
    " r.started_at AS run_started, r.finished_at AS run_finished"
    " FROM feedback_loops l JOIN endpoints e ON e.id = l.endpoint_id"
    " JOIN datasets d ON d.id = l.dataset_id"
    " LEFT JOIN LATERAL (SELECT * FROM feedback_runs fr WHERE fr.loop_id = l.id"
    " ORDER BY fr.started_at DESC LIMIT 1) r ON true"
)


class Loops:
    """Feedback loops of endpoints, and their runs."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utc_now) -> None:
        self._engine = engine
        self._clock = clock

    async def create(
        self,
        slug: str,
        dataset: str,
        schedule: Schedule,
        fmt: ExportFormat,
        include: Sequence[str] | None,
    ) -> dict[str, Any]:
        """A new loop, due at once (``now``, ``every``) or at its first ``on`` time."""
        now = self._clock()
        async with self._engine.begin() as conn:
            endpoint_id = await _endpoint_id(conn, slug)
            dataset_id = await conn.scalar(
                text("SELECT id FROM datasets WHERE name = :name"), {"name": dataset}
            )
            if dataset_id is None:
                raise NotFound(
                    f"dataset: there is no dataset {dataset!r}; create it first "
                    f"(cormorant datasets create {dataset}) or name another"
                )
            loop_id = await conn.scalar(
                text(
                    "INSERT INTO feedback_loops (name, endpoint_id, dataset_id, schedule_kind,"
                    " schedule_expr, format, include, next_run_at, created_at) VALUES (:name,"
                    " :endpoint, :dataset, :kind, :expr, :format, CAST(:include AS jsonb),"
                    " :next, :now) RETURNING id"
                ),
                {
                    "name": dataset,
                    "endpoint": endpoint_id,
                    "dataset": dataset_id,
                    "kind": schedule.kind.value,
                    "expr": schedule.expr,
                    "format": fmt.value,
                    "include": _json_list(DEFAULT_INCLUDE if include is None else include),
                    "next": now
                    if schedule.kind is not ScheduleKind.AT
                    else schedule.next_after(now, now),
                    "now": now,
                },
            )
            return await self._one(conn, slug, loop_id)

    async def list(self, slug: str | None = None) -> list[dict[str, Any]]:
        """Every loop of the endpoint (or of every endpoint), oldest first."""
        async with self._engine.connect() as conn:
            if slug is None:
                rows = await conn.execute(text(f"{_LOOP} ORDER BY l.created_at"))
            else:
                await _endpoint_id(conn, slug)
                rows = await conn.execute(
                    text(f"{_LOOP} WHERE e.slug = :slug ORDER BY l.created_at"), {"slug": slug}
                )
            return [_loop_view(row._mapping) for row in rows]

    async def get(self, slug: str, loop_id: uuid.UUID) -> dict[str, Any]:
        """One loop with its run history, newest first."""
        async with self._engine.connect() as conn:
            loop = await self._one(conn, slug, loop_id)
            runs = await conn.execute(
                text(
                    "SELECT * FROM feedback_runs WHERE loop_id = :id"
                    " ORDER BY started_at DESC LIMIT :limit"
                ),
                {"id": loop_id, "limit": RUN_HISTORY},
            )
            loop["runs"] = [run_view(row._mapping) for row in runs]
            return loop

    async def id_of(self, slug: str, loop_id: uuid.UUID) -> uuid.UUID:
        """``loop_id`` if it is a loop of endpoint ``slug``; ``NotFound`` otherwise."""
        async with self._engine.connect() as conn:
            await self._one(conn, slug, loop_id)
        return loop_id

    async def stop(self, slug: str, loop_id: uuid.UUID) -> dict[str, Any]:
        """Stop the loop: waits for a run in progress; no run starts after this returns."""
        async with self._engine.begin() as conn:
            await self._one(conn, slug, loop_id)
            # Blocks on the row lock a running export holds; every later run locks the row
            # and finds it disabled.
            await conn.execute(
                text(
                    "UPDATE feedback_loops SET enabled = false, next_run_at = NULL,"
                    " stopped_at = coalesce(stopped_at, :now) WHERE id = :id"
                ),
                {"id": loop_id, "now": self._clock()},
            )
            return await self._one(conn, slug, loop_id)

    async def _one(self, conn: AsyncConnection, slug: str, loop_id: uuid.UUID) -> dict[str, Any]:
        row = (
            await conn.execute(
                text(f"{_LOOP} WHERE l.id = :id AND e.slug = :slug"), {"id": loop_id, "slug": slug}
            )
        ).one_or_none()
        if row is None:
            await _endpoint_id(conn, slug)
            raise NotFound(f"endpoint {slug!r} has no feedback loop {loop_id}")
        return _loop_view(row._mapping)


async def _endpoint_id(conn: AsyncConnection, slug: str) -> uuid.UUID:
    endpoint_id: uuid.UUID | None = await conn.scalar(
        text("SELECT id FROM endpoints WHERE slug = :slug AND deleted_at IS NULL"), {"slug": slug}
    )
    if endpoint_id is None:
        raise NotFound(
            f"endpoint: there is no endpoint {slug!r}; check the slug (cormorant endpoints list)"
        )
    return endpoint_id


def _json_list(values: Sequence[str]) -> str:
    return json.dumps(list(values))


def _state(row: Any) -> str:
    if not row["enabled"]:
        return "stopped"
    if row["run_status"] == "failed":
        return "failing"
    if row["next_run_at"] is None:
        return "done"
    return "scheduled"


def _loop_view(row: Any) -> dict[str, Any]:
    schedule = stored_schedule(ScheduleKind(row["schedule_kind"]), row["schedule_expr"])
    last_run = None
    if row["run_id"] is not None:
        last_run = {
            "id": row["run_id"],
            "trigger": row["run_trigger"],
            "status": row["run_status"],
            "rows": row["run_rows"],
            "first_received_at": row["run_first"],
            "last_received_at": row["run_last"],
            "dataset_version": row["run_version"],
            "duration_s": row["run_duration"],
            "error": row["run_error"],
            "started_at": row["run_started"],
            "finished_at": row["run_finished"],
        }
    return {
        "id": row["id"],
        "endpoint": row["endpoint"],
        "dataset": row["dataset"],
        "schedule": schedule.to_json(),
        "format": row["format"],
        "include": list(row["include"]),
        "state": _state(row),
        "last_run": last_run,
        "next_run": row["next_run_at"],
        "created_at": row["created_at"],
        "stopped_at": row["stopped_at"],
    }


def run_view(row: Any) -> dict[str, Any]:
    """The API view of a ``feedback_runs`` row."""
    return {
        "id": row["id"],
        "trigger": row["trigger"],
        "status": row["status"],
        "rows": row["rows"],
        "first_received_at": row["first_received_at"],
        "last_received_at": row["last_received_at"],
        "dataset_version": row["dataset_version"],
        "duration_s": row["duration_s"],
        "error": row["error"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
    }
