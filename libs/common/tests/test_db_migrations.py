"""Migrations against a real PostgreSQL: upgrade, idempotence, parity with the models, CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cormorant.common.db import (
    Base,
    alembic_config,
    create_engine,
    current_revision,
    downgrade,
    ensure_prediction_partitions,
    upgrade,
)
from cormorant.common.db.migrate import include_object

TABLES = {
    "admin_keys",
    "batch_jobs",
    "dataset_versions",
    "datasets",
    "endpoint_tokens",
    "endpoints",
    "feedback_loops",
    "feedback_runs",
    "flow_runs",
    "flows",
    "metrics",
    "model_versions",
    "predictions",
    "replicas",
    "rollouts",
    "traffic",
    "traffic_history",
    "trigger_firings",
    "trigger_states",
    "triggers",
}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


async def tables(conn: AsyncConnection, schema: str = "public") -> set[str]:
    result = await conn.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :schema AND c.relkind IN ('r', 'p')"
        ),
        {"schema": schema},
    )
    return set(result.scalars())


async def schema_snapshot(conn: AsyncConnection, schema: str) -> dict[str, Any]:
    """Columns, constraints, indexes and partitioning of ``schema``, schema names removed."""

    def rows(sql: str) -> Any:
        return conn.execute(text(sql), {"schema": schema})

    skip = "alembic_version|predictions_default|predictions_p\\d{8}"
    columns = await rows(
        "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,"
        " column_default FROM information_schema.columns"
        f" WHERE table_schema = :schema AND table_name !~ '^({skip})$'"
    )
    constraints = await rows(
        "SELECT c.relname, con.conname, pg_get_constraintdef(con.oid)"
        " FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE n.nspname = :schema AND c.relname !~ '^({skip})$'"
    )
    indexes = await rows(
        "SELECT tablename, indexname, indexdef FROM pg_indexes"
        f" WHERE schemaname = :schema AND tablename !~ '^({skip})$'"
    )
    partitioning = await rows(
        "SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = :schema AND c.relkind = 'p'"
    )

    def normalise(result: Any) -> set[tuple[Any, ...]]:
        return {
            tuple(v.replace(f"{schema}.", "") if isinstance(v, str) else v for v in row)
            for row in result
        }

    return {
        "columns": normalise(columns),
        "constraints": normalise(constraints),
        "indexes": normalise(indexes),
        "partitioning": normalise(partitioning),
    }


async def test_upgrade_creates_every_table_and_the_default_partition(
    engine: AsyncEngine,
) -> None:
    assert await current_revision(engine) is None
    await upgrade(engine)
    assert await current_revision(engine) == head()
    async with engine.connect() as conn:
        assert await tables(conn) == TABLES | {"alembic_version", "predictions_default"}
        kind = await conn.scalar(
            text("SELECT relkind::text FROM pg_class WHERE relname = 'predictions'")
        )
        assert kind == "p"


async def test_second_upgrade_is_a_no_op(engine: AsyncEngine) -> None:
    await upgrade(engine)
    async with engine.connect() as conn:
        before = await schema_snapshot(conn, "public")
    await upgrade(engine)
    async with engine.connect() as conn:
        assert await schema_snapshot(conn, "public") == before
    assert await current_revision(engine) == head()


async def test_upgrade_accepts_a_url(database_url: str) -> None:
    await upgrade(database_url)
    assert await current_revision(database_url) == head()


async def test_concurrent_upgrades_take_turns(engine: AsyncEngine) -> None:
    await asyncio.gather(*(upgrade(engine) for _ in range(3)))
    assert await current_revision(engine) == head()


async def test_models_and_migration_agree_for_alembic(engine: AsyncEngine) -> None:
    await upgrade(engine)
    async with engine.begin() as conn:
        await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 2))

    def diff(sync: Connection) -> list[Any]:
        context = MigrationContext.configure(
            sync,
            opts={
                "include_object": include_object,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_models_and_migration_build_the_same_schema(engine: AsyncEngine) -> None:
    # compare_metadata does not look at CHECK constraints, partial-index predicates or
    # partitioning; compare the catalogue of create_all() with that of the migration.
    await upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE SCHEMA reference"))
        reference = await conn.execution_options(schema_translate_map={None: "reference"})
        await reference.run_sync(Base.metadata.create_all)
    async with engine.connect() as conn:
        migrated = await schema_snapshot(conn, "public")
        modelled = await schema_snapshot(conn, "reference")
    assert migrated == modelled
    constraints = {name for _, name, _ in migrated["constraints"]}
    assert {"ck_endpoints_endpointkind", "ck_endpoint_tokens_token_hash_sha256"} <= constraints
    assert ("rollouts", "uq_rollouts_endpoint_id_running") in {
        (table, name) for table, name, _ in migrated["indexes"]
    }
    assert migrated["partitioning"] == {("predictions", "RANGE (received_at)")}


async def test_downgrade_to_base_removes_everything(engine: AsyncEngine) -> None:
    await upgrade(engine)
    async with engine.begin() as conn:
        await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 3))
    await downgrade(engine, "base")
    async with engine.connect() as conn:
        assert await tables(conn) == {"alembic_version"}
    assert await current_revision(engine) is None
    await upgrade(engine)
    assert await current_revision(engine) == head()


async def test_cli_runs_alembic_commands(database_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    command = [sys.executable, "-m", "cormorant.common.db", "--url", database_url]

    async def run(*args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *command, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, err = await process.communicate()
        assert process.returncode == 0, err.decode()

    assert await current_revision(database_url) is None
    await run("upgrade", "head")
    assert await current_revision(database_url) == head()
