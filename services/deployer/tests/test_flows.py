"""Flows in the deployer: flow files checked, runs recorded task by task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cormorant.deployer.testing import DeployerHarness, wait_until

FLOW = """\
name: build-and-ship
tasks:
  - name: build
    type: exec
    command: >-
      mkdir -p out &&
      printf 'def predict(x):\\n    return "built"\\n' > out/predict.py &&
      echo built it
  - name: ship
    type: deploy
    endpoint: shipped
    source: out
    server: {workers: 1}
  - name: again
    type: deploy
    endpoint: shipped
    source: out
  - name: undo
    type: rollback
    endpoint_id: shipped
  - name: never
    type: exec
    command: echo unreachable
"""


async def run_to_end(deployer: DeployerHarness, name: str) -> dict[str, Any]:
    started = await deployer.client.post(f"/api/v1/flows/{name}/runs")
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]

    async def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = (
            await deployer.client.get(f"/api/v1/flows/{name}/runs/{run_id}")
        ).json()
        return run if run["status"] in ("succeeded", "failed") else None

    return await wait_until(finished, timeout=120, what=f"flow {name} finished")


async def test_flow_runs_tasks_in_order_and_stops_at_the_first_failure(
    deployer: DeployerHarness, tmp_path: Path
) -> None:
    """exec builds a model directory, deploy creates the endpoint from it, a second deploy
    adds version 2 and promotes it, rollback has nothing to roll back and fails the run; the
    last task is skipped. Each task's status, output and duration is recorded."""
    saved = await deployer.client.post(
        "/api/v1/flows", json={"yaml": FLOW, "directory": str(tmp_path)}
    )
    assert saved.status_code == 201, saved.text
    assert [t["type"] for t in saved.json()["tasks"]] == [
        "exec", "deploy", "deploy", "rollback", "exec"
    ]  # fmt: skip
    run = await run_to_end(deployer, "build-and-ship")
    tasks = {t["name"]: t for t in run["tasks"]}
    assert run["status"] == "failed"
    assert "undo" in run["error"]
    assert "nothing to roll back" in run["error"]
    assert tasks["build"]["status"] == "succeeded"
    assert "built it" in tasks["build"]["output"]
    assert tasks["build"]["duration_s"] >= 0
    assert tasks["ship"]["status"] == "succeeded"
    assert "created endpoint shipped" in tasks["ship"]["output"]
    assert tasks["again"]["status"] == "succeeded"
    assert "version 2 of shipped deployed and promoted" in tasks["again"]["output"]
    assert tasks["undo"]["status"] == "failed"
    assert tasks["never"]["status"] == "skipped"
    route = await deployer.route("shipped")
    assert route["weights"] == {"2": 100}
    runs = (await deployer.client.get("/api/v1/flows/build-and-ship/runs")).json()["runs"]
    assert [r["id"] for r in runs] == [run["id"]]


async def test_bad_flow_files_are_refused_and_nothing_is_stored(
    deployer: DeployerHarness, tmp_path: Path
) -> None:
    """Unknown task type, missing field, unknown field, bad YAML, bad directory: 400 with a
    message each, and no flow stored."""
    cases = [
        ("name: f\ntasks:\n  - type: teleport\n", "unknown task type 'teleport'"),
        ("name: f\ntasks:\n  - type: deploy\n    source: x\n", "endpoint: required"),
        ("name: f\ntasks:\n  - type: exec\n    command: ls\n    colour: red\n", "colour"),
        ("name: f\ntasks: [\n", "not valid YAML"),
        ("tasks:\n  - type: exec\n    command: ls\n", "name: required"),
        ("name: f\ntasks: []\n", "at least one task"),
    ]
    for text, words in cases:
        response = await deployer.client.post(
            "/api/v1/flows", json={"yaml": text, "directory": str(tmp_path)}
        )
        assert response.status_code == 400, text
        assert words in response.json()["error"]["message"], response.text
    elsewhere = await deployer.client.post(
        "/api/v1/flows", json={"yaml": FLOW, "directory": "relative/dir"}
    )
    assert elsewhere.status_code == 400
    assert "absolute path" in elsewhere.json()["error"]["message"]
    assert (await deployer.client.get("/api/v1/flows")).json()["flows"] == []
    missing = await deployer.client.post("/api/v1/flows/nope/runs")
    assert missing.status_code == 404


async def test_exec_tasks_do_not_see_the_platform_secrets(
    deployer: DeployerHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow's command is user code: the internal secret and the database URL the deployer
    holds are not in its environment; the task's own env is."""
    monkeypatch.setenv("CORMORANT_INTERNAL_SECRET", "cmi_must-not-leak")
    monkeypatch.setenv("CORMORANT_DATABASE_URL", "postgresql://cormorant:must-not-leak@db/x")
    flow = """\
name: peek
tasks:
  - name: peek
    type: exec
    command: echo "[${CORMORANT_INTERNAL_SECRET:-none}] [${CORMORANT_DATABASE_URL:-none}] [$MINE]"
    env: {MINE: mine}
"""
    saved = await deployer.client.post(
        "/api/v1/flows", json={"yaml": flow, "directory": str(tmp_path)}
    )
    assert saved.status_code == 201, saved.text
    run = await run_to_end(deployer, "peek")
    assert run["status"] == "succeeded", run
    assert "[none] [none] [mine]" in run["tasks"][0]["output"]
