"""Snapshots: a version's code is archived once, and reruns serve exactly that code."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import httpx
from deployer_testkit import DeployerHarness

from cormorant.common.datasets import BlobStore
from cormorant.common.endpoints.snapshot import SnapshotStore, write_archive

WORKERS_1 = {"workers": 1}


async def predict(harness: DeployerHarness, slug: str, value: Any) -> Any:
    replica = (await harness.route(slug))["replicas"][0]
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{replica['url']}/predict",
            json={"input_params": value},
            headers=harness.replica_headers(replica),
        )
    assert response.status_code == 200, response.text
    return response.json()["prediction"]


def archive_digest(source: Path) -> str:
    return write_archive(source, io.BytesIO())


def test_archive_is_deterministic_and_skips_history_and_bytecode(tmp_path: Path) -> None:
    """The same files give the same digest whatever their times, and .git or __pycache__
    never end up in a version."""
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "predict.py").write_text("def predict(x):\n    return x\n")
    (source / "pkg" / "util.py").write_text("VALUE = 1\n")
    first = archive_digest(source)

    os.utime(source / "predict.py", (1, 1))
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (source / "pkg" / "__pycache__").mkdir()
    (source / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    assert archive_digest(source) == first

    (source / "pkg" / "util.py").write_text("VALUE = 2\n")
    assert archive_digest(source) != first

    buffer = io.BytesIO()
    write_archive(source, buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["pkg", "predict.py", "pkg/util.py"]
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}


async def test_snapshot_store_archives_once_and_extracts_again_if_removed(tmp_path: Path) -> None:
    """An archive is stored once, as the blob its digest names, and the copy replicas run is
    rebuilt from it when missing."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "predict.py").write_text("def predict(x):\n    return x\n")
    store = SnapshotStore(tmp_path / "data")
    snapshot = await store.snapshot(source)
    assert snapshot.archive == store.archive_url(snapshot.digest)
    assert snapshot.archive.startswith("file://")
    assert snapshot.archive.endswith(f"/{snapshot.digest}")
    assert (snapshot.directory / "predict.py").read_text().startswith("def predict")
    again = await store.snapshot(source)
    assert again == snapshot
    assert store.archives.count() == 1

    (snapshot.directory / "predict.py").unlink()
    snapshot.directory.rmdir()
    restored = await store.extracted(snapshot.digest)
    assert (restored.directory / "predict.py").is_file()


async def test_archives_live_in_the_blob_store_the_settings_name(tmp_path: Path) -> None:
    """With ``CORMORANT_ARCHIVES_URL`` naming another fsspec store (``memory://`` here, as
    ``s3://`` would), archives go there and a removed copy is extracted again from there."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "predict.py").write_text("def predict(x):\n    return x\n")
    store = SnapshotStore(tmp_path / "data", BlobStore(f"memory://archives-{uuid.uuid4().hex}"))
    snapshot = await store.snapshot(source)
    assert snapshot.archive.startswith("memory://")
    assert not (tmp_path / "data" / "archives").exists()
    shutil.rmtree(snapshot.directory)
    restored = await store.extracted(snapshot.digest)
    assert (restored.directory / "predict.py").read_text().startswith("def predict")


async def test_rerun_serves_the_original_code_after_the_folder_changed(
    deployer: DeployerHarness, model_dir: Path
) -> None:
    """A rerun is a new endpoint (new slug, new token) answering with the code that was
    deployed, even though the user has edited the folder since; overrides apply."""
    created = await deployer.create(name="keeper", source=str(model_dir), server=WORKERS_1)
    await deployer.wait_running("keeper")
    assert (await predict(deployer, "keeper", 2))["answer"] == "v1"

    predict_py = model_dir / "predict.py"
    predict_py.write_text(predict_py.read_text().replace('"v1"', '"v2"'))

    response = await deployer.client.post(
        "/api/v1/endpoints/keeper/rerun", json={"env": {"FLAG": "rerun"}}
    )
    assert response.status_code == 201, response.text
    rerun = response.json()
    assert rerun["slug"] == "keeper-2"
    assert rerun["token"] != created["token"]
    assert rerun["source_digest"] == created["source_digest"]
    assert rerun["env"] == {"FLAG": "rerun"}
    assert rerun["server"] == WORKERS_1
    await deployer.wait_running("keeper-2")
    answer = await predict(deployer, "keeper-2", 3)
    assert answer == {"answer": "v1", "double": 6, "flag": "rerun"}

    # A new create reads the folder again: the new code is a new snapshot.
    fresh = await deployer.create(name="fresh", source=str(model_dir), server=WORKERS_1)
    assert fresh["source_digest"] != created["source_digest"]
    await deployer.wait_running("fresh")
    assert (await predict(deployer, "fresh", 1))["answer"] == "v2"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


async def test_git_source_is_cloned_at_the_given_commit(
    deployer: DeployerHarness, tmp_path: Path
) -> None:
    """Deploying from a git URL and a commit serves that commit's code, not the branch tip;
    an unknown commit is a 400 naming the commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet")
    (repo / "predict.py").write_text('def predict(x):\n    return "first"\n')
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "first")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "predict.py").write_text('def predict(x):\n    return "second"\n')
    git(repo, "commit", "--quiet", "-am", "second")

    url = f"file://{repo}"
    created = await deployer.create(name="from git", source=url, commit=first, server=WORKERS_1)
    assert created["commit"] == first
    assert created["source"] == url
    await deployer.wait_running("from-git")
    assert await predict(deployer, "from-git", 0) == "first"

    response = await deployer.client.post(
        "/api/v1/endpoints",
        json={"name": "bad", "source": url, "commit": "0" * 40, "server": WORKERS_1},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(f"commit: checking out '{'0' * 40}'")

    tip = await deployer.create(name="tip", source=url, server=WORKERS_1)
    assert tip["commit"] == git(repo, "rev-parse", "HEAD") != first
