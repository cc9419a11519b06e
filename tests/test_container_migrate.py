"""The image's ``migrate`` step against a real PostgreSQL: migrations, then the first admin key.

Kubernetes (the ``cormorant-migrate`` Job) and Docker Compose run ``deploy/docker/migrate.py``
with the operator's chosen admin key; the gateway must then accept that key and nothing else.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import select

from cormorant.common.auth import hash_token
from cormorant.common.db import create_engine, current_revision, session_factory
from cormorant.common.db.models import AdminKey

ROOT = Path(__file__).resolve().parents[1]
KEY = "cmk_" + "k8s" * 10


def load_migrate() -> ModuleType:
    """deploy/docker/migrate.py as a module (it is copied into the image, not installed)."""
    spec = importlib.util.spec_from_file_location(
        "image_migrate", ROOT / "deploy/docker/migrate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def recorded_keys(url: str) -> list[str]:
    """Hashes of the admin keys in the database."""
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            return list(await session.scalars(select(AdminKey.key_hash)))
    finally:
        await engine.dispose()


async def test_migrate_records_the_admin_key_once(database_url: str) -> None:
    migrate = load_migrate()
    assert await migrate.migrate(database_url, KEY, timeout=30) == "migrated; admin key recorded"
    assert await current_revision(database_url) is not None
    assert await recorded_keys(database_url) == [hash_token(KEY)]
    again = await migrate.migrate(database_url, KEY, timeout=30)
    assert again == "migrated; the admin key was already recorded"
    assert await recorded_keys(database_url) == [hash_token(KEY)]


async def test_migrate_records_the_alerts_key_beside_the_admin_key(database_url: str) -> None:
    migrate = load_migrate()
    alerts = "cmk_" + "alerts" * 5
    outcome = await migrate.migrate(database_url, KEY, timeout=30, alerts_key=alerts)
    assert outcome == "migrated; admin key recorded; alerts key recorded"
    assert sorted(await recorded_keys(database_url)) == sorted(
        [hash_token(KEY), hash_token(alerts)]
    )
    with pytest.raises(SystemExit, match="alerts key must differ"):
        await migrate.migrate(database_url, KEY, timeout=30, alerts_key=KEY)


async def test_migrate_without_a_key_only_migrates(database_url: str) -> None:
    migrate = load_migrate()
    assert await migrate.migrate(database_url, None, timeout=30) == "migrated; no admin key given"
    assert await recorded_keys(database_url) == []


@pytest.mark.parametrize("content", ["", "not-a-key-at-all-but-long-enough", "cmk_short"])
def test_an_unusable_admin_key_file_is_refused_with_how_to_make_one(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    with pytest.raises(SystemExit, match=r"starts with 'cmk_'.*openssl rand"):
        load_migrate().read_key(path)


def test_a_published_placeholder_key_needs_a_throwaway_cluster(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("cmk_dev-only-admin-key-change-me\n")
    migrate = load_migrate()
    with pytest.raises(SystemExit, match=r"published placeholder.*--throwaway-cluster"):
        migrate.read_key(path)
    assert migrate.read_key(path, throwaway=True) == "cmk_dev-only-admin-key-change-me"
