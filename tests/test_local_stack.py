"""`cormorant up` / `status` / `down`: the local stack a newcomer starts with `make up`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from cormorant.common.ports import free_port
from tests.conftest import processes_under

SERVICES = ("fleet", "deployer", "predictlog", "feedback", "alerts", "batch", "gateway")


ROOT = Path(__file__).resolve().parent.parent


def _cli(args: list[str], env: dict[str, str], _: Path) -> subprocess.CompletedProcess[str]:
    # From the repository's root, as `make up` runs it: the example lives in examples/.
    return subprocess.run(
        [sys.executable, "-m", "cormorant.sdk.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a stack of this test's own: its data dir and free ports."""
    env = {**os.environ, "CORMORANT_DATA_DIR": str(tmp_path / "data")}
    for name in ("nats", "postgres", *SERVICES):
        env[f"CORMORANT_STACK_{name.upper()}_PORT"] = str(free_port())
    env["CORMORANT_STACK_GATEWAY_GRPC_PORT"] = str(free_port())
    return env


def test_up_status_down_and_up_again(stack_env: dict[str, str], tmp_path: Path) -> None:
    """Up serves every /healthz and writes a private stack file; down leaves no process;
    a second up reuses the data (the same admin key) and deploys the example once."""
    data_dir = tmp_path / "data"
    try:
        first = _cli(["up", "--no-example"], stack_env, tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr
        stack_file = data_dir / "stack.json"
        assert stat.S_IMODE(stack_file.stat().st_mode) == 0o600
        stack = json.loads(stack_file.read_text())
        assert stack["state"] == "ready"
        assert stack["admin_key"].startswith("cmk_")
        assert set(stack["services"]) == set(SERVICES)
        for name, info in stack["services"].items():
            assert httpx.get(info["url"] + "/healthz").status_code == 200, name
            assert info["url"] in first.stdout

        _assert_database_needs_passwords(data_dir, stack)
        assert json.loads((data_dir / "secrets.json").read_text())["postgres_password"] not in (
            first.stdout + first.stderr
        )

        status = _cli(["status", "--json"], stack_env, tmp_path)
        assert status.returncode == 0
        assert json.loads(status.stdout)["services"] == stack["services"]

        again = _cli(["up", "--no-example"], stack_env, tmp_path)
        assert again.returncode == 0
        assert "already running" in again.stdout

        down = _cli(["down"], stack_env, tmp_path)
        assert down.returncode == 0, down.stdout + down.stderr
        assert processes_under(data_dir) == []
        for info in stack["services"].values():
            assert not psutil.pid_exists(info["pid"])

        second = _cli(["up"], stack_env, tmp_path)
        assert second.returncode == 0, second.stdout + second.stderr
        restarted = json.loads(stack_file.read_text())
        assert restarted["admin_key"] == stack["admin_key"]
        assert (data_dir / "postgres" / "PG_VERSION").exists()

        # The newcomer's first minute: the sentiment example is deployed and callable.
        example = json.loads((data_dir / "example.json").read_text())
        assert stat.S_IMODE((data_dir / "example.json").stat().st_mode) == 0o600
        assert "curl -s" in second.stdout
        assert f"Bearer {example['token']}" in second.stdout
        gateway = restarted["services"]["gateway"]["url"]
        answer = httpx.post(
            f"{gateway}/api/v1/endpoints/{example['slug']}/predict",
            json={"input_params": "what a wonderful little film"},
            headers={"Authorization": f"Bearer {example['token']}"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["prediction"]["label"] == "positive"
        reused = _cli(["up"], stack_env, tmp_path)
        assert reused.returncode == 0
        assert f"Bearer {example['token']}" in reused.stdout
        listed = httpx.get(
            f"{gateway}/api/v1/endpoints",
            headers={"Authorization": f"Bearer {restarted['admin_key']}"},
        ).json()["endpoints"]
        assert [ep["slug"] for ep in listed] == [example["slug"]]
    finally:
        _cli(["down"], stack_env, tmp_path)
    assert processes_under(data_dir) == []


def _assert_database_needs_passwords(data_dir: Path, stack: dict[str, object]) -> None:
    """The embedded PostgreSQL takes no connection without a password, and the services'
    role owns the schema without being a superuser."""
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    secrets_file = data_dir / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    url = make_url(str(stack["database_url"]))
    assert url.username == "cormorant"
    assert url.password

    async def check() -> None:
        for user, password in (("postgres", None), ("cormorant", None), ("postgres", "x")):
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(
                    host=url.host, port=url.port, user=user, password=password, database="postgres"
                )
        conn = await asyncpg.connect(
            host=url.host, port=url.port, user=url.username, password=url.password,
            database=url.database,
        )  # fmt: skip
        try:
            superuser = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            assert await conn.fetchval(superuser) is False
            owners = await conn.fetch(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
            )
            assert [row["tableowner"] for row in owners] == ["cormorant"]
        finally:
            await conn.close()

    asyncio.run(check())


def test_busy_port_is_refused_with_its_name(stack_env: dict[str, str], tmp_path: Path) -> None:
    """A port already taken makes `up` fail and say which one, starting nothing."""
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(stack_env["CORMORANT_STACK_GATEWAY_PORT"])))
        blocker.listen()
        result = _cli(["up", "--no-example"], stack_env, tmp_path)
    assert result.returncode == 1
    assert "gateway" in result.stderr
    assert "in use" in result.stderr
    assert processes_under(tmp_path / "data") == []
