"""Endpoint tokens: shown once, stored as hashes only, rotated with immediate revocation."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import nats
from deployer_testkit import DeployerHarness

from cormorant.common.auth import hash_token
from cormorant.common.db import asyncpg_dsn
from cormorant.common.events import EndpointChanged, decode
from cormorant.devstack.testing.waits import eventually

WORKERS_1 = {"workers": 1}


async def text_values(database_url: str) -> list[str]:
    """Every text, varchar and JSON value of every table, as text."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' "
            "AND data_type IN ('text', 'character varying', 'jsonb', 'json')"
        )
        values: list[str] = []
        for row in columns:
            query = f'SELECT "{row["column_name"]}"::text FROM "{row["table_name"]}"'
            values += [v for (v,) in await conn.fetch(query) if v is not None]
        return values
    finally:
        await conn.close()


async def test_rotation_revokes_the_old_token_and_no_raw_token_is_stored(
    deployer: DeployerHarness, model_dir: Path, database_url: str, nats_url: str
) -> None:
    """Rotating gives a new token once, revokes the old one at once (the gateway hears of it),
    and neither token appears in any column of the database, only their hashes."""
    created = await deployer.create(
        name="secret", kind="batch", source=str(model_dir), server=WORKERS_1
    )
    old = created["token"]
    nc = await nats.connect(nats_url)
    rotated_events: list[EndpointChanged] = []

    async def collect(msg: nats.aio.msg.Msg) -> None:
        event = decode(msg.data, msg.headers)
        if isinstance(event, EndpointChanged) and event.attributes.get("token_rotated"):
            rotated_events.append(event)

    await nc.subscribe("cormorant.endpoint.secret.>", cb=collect)
    try:
        response = await deployer.client.post("/api/v1/endpoints/secret/token")
        assert response.status_code == 200, response.text
        new = response.json()["token"]
        assert response.json()["slug"] == "secret"
        assert new != old
        assert new.startswith("cmt_")
        await eventually(lambda: _value(rotated_events), what="EndpointChanged token_rotated")
        assert rotated_events[0].change == "updated"
    finally:
        await nc.close()

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT token_hash, prefix, revoked_at FROM endpoint_tokens ORDER BY created_at"
        )
    finally:
        await conn.close()
    assert [r["token_hash"] for r in rows] == [hash_token(old), hash_token(new)]
    assert rows[0]["revoked_at"] is not None
    assert rows[1]["revoked_at"] is None
    assert rows[1]["prefix"] == new[:12]

    stored = await text_values(database_url)
    assert stored, "the scan read nothing"
    for token in (old, new):
        assert not any(token in value for value in stored)

    document = await deployer.get("secret")
    assert "token" not in document


async def _value(items: list[EndpointChanged]) -> bool:
    return bool(items)
