"""Replicas forked from the warm worker template: they serve, crash, stop and are adopted like
replicas started as fresh processes; with no preload modules there is no template at all."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from deployer_testkit import (
    DeployerHarness,
    PlatformSettings,
    pid_gone,
    running_deployer,
    worker_processes,
)

from cormorant.devstack.testing.waits import eventually
from cormorant.fleet.runtime.local import LocalRuntime
from cormorant.fleet.runtime.template import WorkerTemplate
from cormorant.fleet.settings import FleetSettings

FORKED = "forked from the worker template"
EXITS_AT_START = """
import os
print("cannot open the model: disk on fire", flush=True)
os._exit(3)


def predict(x):
    return x
"""


@pytest.fixture
async def deployer(deployer_settings: PlatformSettings) -> AsyncIterator[DeployerHarness]:
    """A deployer whose template preloads numpy (the worker's own stack is always preloaded)."""
    settings = deployer_settings.model_copy(update={"preload_modules": ["numpy"]})
    async with running_deployer(settings) as harness:
        yield harness


async def kill_and_await_restart(deployer: DeployerHarness, slug: str, pid: int) -> str:
    """SIGKILL the replica ``pid`` of ``slug``; once restarted and ready, the crash's reason."""
    os.kill(pid, signal.SIGKILL)
    after = await deployer.wait_for(
        slug,
        lambda e: e["restarts"] == 1 and e["replicas"]["ready"] == 1,
        what="restarted and ready",
    )
    [reason] = [e["reason"] for e in after["events"] if e["state"] == "crashed"]
    reason_text: str = reason
    return reason_text


async def ready_template(deployer: DeployerHarness) -> WorkerTemplate:
    """The deployer's template, once it has imported everything."""
    runtime = deployer.state["fleet"].runtime
    assert isinstance(runtime, LocalRuntime)
    assert runtime.template is not None
    assert await runtime.template.wait_ready(120), "the worker template did not become ready"
    return runtime.template


def template_pid(template: WorkerTemplate) -> int:
    assert template.generation is not None
    return template.generation.pid


async def replica(deployer: DeployerHarness, slug: str) -> psutil.Process:
    """The one replica process of ``slug``; a just-restarted one may take a moment to lead
    its own session (how ``worker_processes`` tells a replica from its workers)."""
    marker = str(deployer.settings.data_dir)

    def one() -> list[psutil.Process] | None:
        found = [p for p in worker_processes(marker) if slug in p.cmdline()]
        return found if len(found) == 1 else None

    [process] = await eventually(one, within=30, what=f"one replica process of {slug!r}")
    return process


def replica_log(deployer: DeployerHarness, slug: str) -> str:
    logs = (deployer.settings.data_dir / "logs" / "replicas").glob(f"{slug}-*.log")
    return "".join(path.read_text(errors="replace") for path in logs)


def group(pid: int) -> list[int]:
    """Live processes of the process group led by ``pid``."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
    return members


async def predict(deployer: DeployerHarness, slug: str, value: Any) -> Any:
    """``value`` predicted by the endpoint's first replica, called as the gateway calls it."""
    routed = (await deployer.route(slug))["replicas"][0]
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{routed['url']}/predict",
            json={"input_params": value},
            headers=deployer.replica_headers(routed),
        )
    assert response.status_code == 200, response.text
    return response.json()["prediction"]


async def wait_group_gone(pid: int) -> None:
    async def gone() -> bool:
        return not group(pid)

    await eventually(gone, within=30, what=f"process group {pid} gone")


async def test_forked_replica_serves_is_adopted_and_stops_with_its_workers(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """A replica forked from the template serves predictions with its own environment, shows
    its worker command line, survives a deployer restart (the template does not) and is
    adopted; deleting the endpoint stops its gunicorn master and workers."""
    template = await ready_template(deployer)
    refused = await deployer.client.post(
        "/api/v1/endpoints",
        json={"name": "bound", "source": str(model_dir), "server": {"bind": "0.0.0.0:80"}},
    )
    assert refused.status_code == 400, refused.text
    assert "server setting 'bind': cannot be set" in refused.json()["error"]["message"]

    await deployer.create(
        name="warm", source=str(model_dir), server={"workers": 2}, env={"FLAG": "on"}
    )
    await deployer.wait_running("warm")
    assert await predict(deployer, "warm", 21) == {"answer": "v1", "double": 42, "flag": "on"}
    process = await replica(deployer, "warm")
    assert process.ppid() == template_pid(template)
    assert "--port" in process.cmdline()
    assert FORKED in replica_log(deployer, "warm")
    assert len(group(process.pid)) == 3  # the gunicorn master and its two workers
    old_template = template_pid(template)

    await deployer.restart()

    assert pid_gone(old_template)
    after = await deployer.wait_running("warm")
    assert {e["reason"] for e in after["events"]} == {"adopted after a fleet restart"}
    assert (await replica(deployer, "warm")).pid == process.pid
    assert await predict(deployer, "warm", 2) == {"answer": "v1", "double": 4, "flag": "on"}

    response = await deployer.client.delete("/api/v1/endpoints/warm")
    assert response.status_code in (200, 202, 204), response.text
    await wait_group_gone(process.pid)


async def test_forked_replica_crashes_are_reported_with_their_reason(
    deployer: DeployerHarness, model_dir: Path, tmp_path: Path
) -> None:
    """What a user sees of a crash does not depend on how the replica started: a model that
    cannot import, a replica that exits at start (its exit code, which only the template
    collects), one killed by a signal (restarted, forked again); stopping one kills its
    workers too."""
    template = await ready_template(deployer)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "predict.py").write_text(
        'raise RuntimeError("model.bin is missing")\n\n\ndef predict(x):\n    return x\n'
    )
    exits = tmp_path / "exits"
    exits.mkdir()
    (exits / "predict.py").write_text(EXITS_AT_START)
    await deployer.create(name="broken", source=str(broken), server={"workers": 1})
    await deployer.create(name="exits", source=str(exits), server={"workers": 1})
    await deployer.create(name="phoenix", source=str(model_dir), server={"workers": 1})

    failed = await deployer.wait_for("broken", lambda e: e["status"] == "failed", what="failed")
    assert "RuntimeError: model.bin is missing" in failed["reason"]
    assert FORKED in replica_log(deployer, "broken")

    crashed = await deployer.wait_for(
        "exits", lambda e: any(x["state"] == "crashed" for x in e["events"]), what="a crash"
    )
    [reason, *_] = [e["reason"] for e in crashed["events"] if e["state"] == "crashed"]
    assert reason.startswith("exited with code 3 before it was ready; log tail:"), reason
    assert "cannot open the model: disk on fire" in reason

    await deployer.wait_running("phoenix")
    victim = await replica(deployer, "phoenix")
    assert victim.ppid() == template_pid(template)
    reason = await kill_and_await_restart(deployer, "phoenix", victim.pid)
    assert reason.startswith("killed by SIGKILL; log tail:"), reason
    restarted = await replica(deployer, "phoenix")
    assert restarted.pid != victim.pid
    assert restarted.ppid() == template_pid(template)
    assert len(group(restarted.pid)) == 2

    response = await deployer.client.delete("/api/v1/endpoints/phoenix")
    assert response.status_code in (200, 202, 204), response.text
    await wait_group_gone(restarted.pid)


async def test_dead_template_is_replaced_and_its_replicas_stay_watched(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """A template that dies is started again; a replica it forked keeps serving and its crash
    is still noticed and restarted (from the new template)."""
    template = await ready_template(deployer)
    await deployer.create(name="orphan", source=str(model_dir), server={"workers": 1})
    await deployer.wait_running("orphan")
    first = await replica(deployer, "orphan")
    old = template_pid(template)
    assert first.ppid() == old

    os.kill(old, signal.SIGKILL)

    async def replaced() -> bool:
        return template.ready and template_pid(template) != old

    await eventually(replaced, within=120, what="a new worker template")
    assert await predict(deployer, "orphan", 1) == {"answer": "v1", "double": 2, "flag": None}

    reason = await kill_and_await_restart(deployer, "orphan", first.pid)
    assert reason.startswith("exited; log tail:"), reason  # its exit code died with its parent
    assert (await replica(deployer, "orphan")).ppid() == template_pid(template)


async def test_replica_whose_environment_libraries_read_at_import_starts_fresh(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """An endpoint that sets a variable libraries read when imported (`OMP_NUM_THREADS`) gets
    a fresh process: forked, it would inherit libraries imported without it."""
    await ready_template(deployer)
    await deployer.create(
        name="threads", source=str(model_dir), server={"workers": 1},
        env={"OMP_NUM_THREADS": "1", "FLAG": "x"},
    )  # fmt: skip
    await deployer.wait_running("threads")
    assert await predict(deployer, "threads", 1) == {"answer": "v1", "double": 2, "flag": "x"}
    assert (await replica(deployer, "threads")).ppid() == os.getpid()
    assert FORKED not in replica_log(deployer, "threads")


async def test_without_preload_modules_replicas_start_as_fresh_processes(
    deployer_settings: PlatformSettings, model_dir: Path
) -> None:
    """`preload_modules` empty: no template; the replica is the deployer's own child process."""
    settings = deployer_settings.model_copy(update={"preload_modules": []})
    async with running_deployer(settings) as deployer:
        runtime = deployer.state["fleet"].runtime
        assert isinstance(runtime, LocalRuntime)
        assert runtime.template is None
        await deployer.create(name="plain", source=str(model_dir), server={"workers": 1})
        await deployer.wait_running("plain")
        assert await predict(deployer, "plain", 4) == {"answer": "v1", "double": 8, "flag": None}
        assert (await replica(deployer, "plain")).ppid() == os.getpid()
        assert FORKED not in replica_log(deployer, "plain")


@pytest.mark.parametrize(
    ("value", "modules"),
    [("", []), ("numpy, sklearn.linear_model", ["numpy", "sklearn.linear_model"]),
     ('["pandas"]', ["pandas"])],
)  # fmt: skip
def test_preload_modules_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, modules: list[str]
) -> None:
    """`CORMORANT_FLEET_PRELOAD_MODULES` takes a comma-separated list (or JSON); empty means
    no template, as does a custom worker command."""
    monkeypatch.setenv("CORMORANT_FLEET_PRELOAD_MODULES", value)
    settings = FleetSettings()
    assert settings.preload_modules == modules
    assert (settings.template_command() is None) == (not modules)
    custom = settings.model_copy(update={"worker_command": ["my-worker"]})
    assert custom.template_command() is None


async def test_with_stop_on_shutdown_every_replica_ends_with_the_deployer(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """With ``stop_replicas_on_shutdown`` (the local stack), a shutdown stops every replica —
    forked from the template or started afresh, started by this deployer or adopted from the
    one before — and returns only once their process groups are gone; each replica's pid
    record (``run/replicas``) lives exactly as long as it does."""
    await ready_template(deployer)
    await deployer.create(name="forked", source=str(model_dir), server={"workers": 2})
    # A variable libraries read at import: this one starts as a fresh process.
    await deployer.create(name="fresh", source=str(model_dir), env={"OMP_NUM_THREADS": "1"})
    await deployer.wait_running("forked")
    await deployer.wait_running("fresh")
    records = deployer.settings.data_dir / "run" / "replicas"
    assert len(list(records.glob("*.json"))) == 2

    await deployer.stop()  # the default: replicas keep serving, for the next one to adopt
    deployer.settings = deployer.settings.model_copy(update={"stop_replicas_on_shutdown": True})
    await deployer.start()
    for slug in ("forked", "fresh"):
        adopted = await deployer.wait_running(slug)
        assert {e["reason"] for e in adopted["events"]} == {"adopted after a fleet restart"}
    await deployer.create(name="new", source=str(model_dir), server={"workers": 2})
    await deployer.wait_running("new")
    leaders = [(await replica(deployer, slug)).pid for slug in ("forked", "fresh", "new")]
    assert all(group(pid) for pid in leaders)
    assert len(list(records.glob("*.json"))) == 3

    await deployer.stop()

    assert [pid for pid in leaders if group(pid)] == []
    assert list(records.glob("*.json")) == []
