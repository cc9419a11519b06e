"""Each ready replica's CPU, memory and open files, read from its own /metrics on request."""

from __future__ import annotations

from pathlib import Path

from cormorant.deployer.api.usage import parse_usage
from cormorant.deployer.testing import DeployerHarness


async def test_usage_of_a_running_replica(deployer: DeployerHarness, model_dir: Path) -> None:
    """The console's Monitoring tab gets the one replica's figures; none for an unknown slug."""
    await deployer.create(name="usage", source=str(model_dir), server={"workers": 1})
    await deployer.wait_running("usage")
    [ready] = (await deployer.route("usage"))["replicas"]

    response = await deployer.client.get("/api/v1/endpoints/usage/replicas/usage")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["slug"] == "usage"
    [replica] = answer["replicas"]
    assert (replica["id"], replica["version"], replica["state"]) == (ready["id"], "1", "ready")
    assert replica["error"] is None
    assert replica["cpu_seconds"] > 0
    # A Python process serving a model holds well over 10 MB and a few files.
    assert replica["memory_bytes"] > 10_000_000
    assert replica["open_fds"] >= 3

    missing = await deployer.client.get("/api/v1/endpoints/nope/replicas/usage")
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]["message"]


def test_only_plain_finite_samples_are_read() -> None:
    """Labelled look-alikes, comments, garbage and non-finite values are skipped."""
    text = (
        "# HELP process_cpu_seconds_total Total user and system CPU time.\n"
        "process_cpu_seconds_total 1.5\n"
        'process_resident_memory_bytes{fake="1"} 9\n'
        "process_resident_memory_bytes 2048 1700000000\n"
        "process_open_fds NaN\n"
        "process_cpu_seconds_total_extra 7\n"
        "garbage\n"
    )
    assert parse_usage(text) == {"cpu_seconds": 1.5, "memory_bytes": 2048.0}
