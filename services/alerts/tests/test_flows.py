"""Flows in the alerts service: flow files checked, runs recorded task by task, and ``exec``
tasks contained (whitelisted environment, private workspace, limits, deadline). Flows whose
tasks call the API (deploy, rollback, batch-predict) run end to end in tests/test_flows.py."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.msg import Msg

from cormorant.alerts.flows.exec import ExecFailed, ExecLimits, private_workspace, run_exec
from cormorant.common.bus import close, connect
from cormorant.common.events import FlowRunChanged, decode

FLOW = """\
name: build-then-fail
tasks:
  - name: build
    type: exec
    command: >-
      mkdir -p out &&
      printf 'def predict(x):\\n    return "built"\\n' > out/predict.py &&
      echo built it
  - name: check
    type: exec
    command: [python, -c, "import pathlib; print(pathlib.Path('out/predict.py').read_text())"]
  - name: fail
    type: exec
    command: echo about to fail && exit 3
  - name: never
    type: exec
    command: echo unreachable
"""


async def run_to_end(alerts: httpx.AsyncClient, name: str) -> dict[str, Any]:
    started = await alerts.post(f"/api/v1/flows/{name}/runs")
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    deadline = time.monotonic() + 60
    while True:
        run: dict[str, Any] = (await alerts.get(f"/api/v1/flows/{name}/runs/{run_id}")).json()
        if run["status"] in ("succeeded", "failed"):
            return run
        assert time.monotonic() < deadline, f"flow {name} still {run['status']}"
        await asyncio.sleep(0.05)


async def test_flow_runs_tasks_in_order_and_stops_at_the_first_failure(
    alerts: httpx.AsyncClient, nats_url: str, tmp_path: Path
) -> None:
    """exec builds a file that the next task reads (one workspace per run), a failing command
    fails the run with its status and output, the last task is skipped; each task's status,
    output and duration is recorded and the run is announced as FlowRunChanged. The flow's
    own directory is left untouched."""
    events: list[FlowRunChanged] = []

    async def on_event(msg: Msg) -> None:
        event = decode(msg.data, msg.headers)
        assert isinstance(event, FlowRunChanged)
        events.append(event)

    nc = await connect(nats_url, name="test-flow-events")
    await nc.subscribe(FlowRunChanged.subject_filter(), cb=on_event)
    try:
        saved = await alerts.post("/api/v1/flows", json={"yaml": FLOW, "directory": str(tmp_path)})
        assert saved.status_code == 201, saved.text
        assert [t["type"] for t in saved.json()["tasks"]] == ["exec"] * 4
        run = await run_to_end(alerts, "build-then-fail")
        await nc.flush()
    finally:
        await close(nc)
    tasks = {t["name"]: t for t in run["tasks"]}
    assert run["status"] == "failed"
    assert "task fail (exec) failed" in run["error"]
    assert "exited with status 3" in run["error"]
    assert tasks["build"]["status"] == "succeeded"
    assert "built it" in tasks["build"]["output"]
    assert tasks["build"]["duration_s"] >= 0
    assert 'return "built"' in tasks["check"]["output"]
    assert tasks["fail"]["status"] == "failed"
    assert "about to fail" in tasks["fail"]["output"]
    assert tasks["never"]["status"] == "skipped"
    assert not (tmp_path / "out").exists()
    runs = (await alerts.get("/api/v1/flows/build-then-fail/runs")).json()["runs"]
    assert [r["id"] for r in runs] == [run["id"]]
    mine = [(e.task, e.status) for e in events if e.run_id == run["id"]]
    assert mine[0] == (None, "running")
    assert ("build", "succeeded") in mine
    assert mine[-1] == (None, "failed")


async def test_bad_flow_files_are_refused_and_nothing_is_stored(
    alerts: httpx.AsyncClient, tmp_path: Path
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
        response = await alerts.post(
            "/api/v1/flows", json={"yaml": text, "directory": str(tmp_path)}
        )
        assert response.status_code == 400, text
        assert words in response.json()["error"]["message"], response.text
    elsewhere = await alerts.post("/api/v1/flows", json={"yaml": FLOW, "directory": "relative/dir"})
    assert elsewhere.status_code == 400
    assert "absolute path" in elsewhere.json()["error"]["message"]
    assert (await alerts.get("/api/v1/flows")).json()["flows"] == []
    missing = await alerts.post("/api/v1/flows/nope/runs")
    assert missing.status_code == 404


LIMITS = ExecLimits(memory_bytes=1 << 30, open_files=64)

PROBE = """\
import json, os, resource, sys
print(json.dumps({
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    "as": resource.getrlimit(resource.RLIMIT_AS)[0],
    "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
    "session_leader": os.getsid(0) == os.getpid(),
}))
"""


async def test_an_exec_process_sees_only_its_workspace_whitelist_and_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's secrets stay out of the command's environment; it runs in a private
    copy of the flow's directory (mode 0700) with HOME there, under the rlimits, in a
    session of its own; the task's own env reaches it."""
    import json

    monkeypatch.setenv("CORMORANT_DATABASE_URL", "postgresql://secret@db/cormorant")
    monkeypatch.setenv("CORMORANT_ALERTS_API_KEY", "cmk_secret")
    monkeypatch.setenv("CORMORANT_DATA_DIR", "/var/lib/cormorant")
    (tmp_path / "probe.py").write_text(PROBE)
    with private_workspace(tmp_path, max_bytes=1 << 20) as workspace:
        finished = await run_exec(
            ["python", "probe.py"], workspace=workspace, env={"MODE": "test"}, timeout_s=30,
            limits=LIMITS,
        )  # fmt: skip
        assert finished.returncode == 0, finished.output
        seen = json.loads(finished.output)
        assert oct(os.stat(workspace.parent).st_mode & 0o777) == "0o700"
    assert not workspace.exists()
    env = seen["env"]
    assert not [name for name in env if name.startswith("CORMORANT_")]
    assert "cmk_secret" not in json.dumps(env)
    assert env["MODE"] == "test"
    assert env["HOME"] == str(workspace)
    assert seen["cwd"] == str(workspace)
    assert seen["cwd"] != str(tmp_path)
    assert (seen["nofile"], seen["as"], seen["core"]) == (64, 1 << 30, 0)
    assert seen["session_leader"] is True


async def test_an_exec_process_past_its_deadline_is_killed_with_what_it_spawned(
    tmp_path: Path,
) -> None:
    """A command (and the child it started) outliving its deadline is killed; the failure
    names the deadline and keeps what it printed."""
    with private_workspace(tmp_path, max_bytes=1 << 20) as workspace:
        with pytest.raises(ExecFailed) as failed:
            await run_exec(
                ["/bin/sh", "-c", "echo started; sleep 300 & echo $! > child.pid; wait"],
                workspace=workspace, env={}, timeout_s=1, limits=LIMITS,
            )  # fmt: skip
        child = int((workspace / "child.pid").read_text())
    assert "within 1 s" in failed.value.message
    assert "started" in failed.value.output
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the command's child outlived it"
        await asyncio.sleep(0.05)


def test_a_directory_too_large_for_a_workspace_is_refused(tmp_path: Path) -> None:
    """Over the limit: refused with the sizes, nothing copied."""
    (tmp_path / "data.bin").write_bytes(b"x" * 4096)
    with pytest.raises(ExecFailed) as refused, private_workspace(tmp_path, max_bytes=1024):
        pass
    assert "keep data in datasets" in refused.value.message


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for its reaper counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


CONTAINED_PROBE = """
import json, os
secret = os.environ["SECRET_FILE"]
try:
    open(secret).read()
    read = "read"
except PermissionError:
    read = "refused"
try:
    open(f"/proc/{os.getppid()}/environ").read()
    parent_env = "read"
except (PermissionError, ProcessLookupError):
    parent_env = "refused"
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
open("made-here", "w").write("ok")
print(json.dumps({"uid": os.getuid(), "groups": os.getgroups(), "secret": read,
                  "parent_env": parent_env, "no_new_privs": status["NoNewPrivs"].strip(),
                  "cap_eff": status["CapEff"].strip()}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root (as make up runs)")
async def test_an_exec_process_runs_as_its_own_uid_without_privileges(tmp_path: Path) -> None:
    """Run by root, the command runs as the exec uid with no capability and no_new_privs: it
    cannot read a file only the service may read, nor the service's environment, yet writes
    in its workspace."""
    import json

    from cormorant.alerts.flows.exec import EXEC_IDENTITY, contained_identity

    flow = tmp_path / "flow"
    flow.mkdir()
    (flow / "probe.py").write_text(CONTAINED_PROBE)
    secret = tmp_path / "secret"
    secret.write_text("the platform's")
    secret.chmod(0o600)
    identity = contained_identity()
    assert identity == EXEC_IDENTITY
    limits = ExecLimits(memory_bytes=LIMITS.memory_bytes, open_files=64, identity=identity)
    with private_workspace(flow, max_bytes=1 << 20, owner=identity) as workspace:
        finished = await run_exec(
            ["python", "probe.py"], workspace=workspace, env={"SECRET_FILE": str(secret)},
            timeout_s=30, limits=limits,
        )  # fmt: skip
        assert finished.returncode == 0, finished.output
        assert (workspace / "made-here").read_text() == "ok"
    seen = json.loads(finished.output)
    assert seen["uid"] == EXEC_IDENTITY.uid
    assert seen["groups"] in ([], [EXEC_IDENTITY.gid])
    assert (seen["secret"], seen["parent_env"]) == ("refused", "refused")
    assert (seen["no_new_privs"], int(seen["cap_eff"], 16)) == ("1", 0)
