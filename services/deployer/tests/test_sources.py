"""A source folder is hostile input: links out of it are refused, archives widen no mode."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from deployer_testkit import DeployerHarness

from cormorant.common.endpoints.snapshot import write_archive

PREDICT = "def predict(x):\n    return x\n"


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    (source / "predict.py").write_text(PREDICT)
    return source


async def test_a_link_out_of_the_source_is_refused_naming_it(
    deployer: DeployerHarness, tmp_path: Path
) -> None:
    """A link to a file or a folder outside the source is a 400 naming the link (for a
    folder and for a git repository), and nothing is created or archived; links that stay
    inside the folder deploy."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only")
    secret.chmod(0o600)
    source = _source(tmp_path)
    (source / "data").mkdir()
    (source / "data" / "leak.txt").symlink_to(secret)
    body = {"name": "links", "source": str(source), "server": {"workers": 1}}
    response = await deployer.client.post("/api/v1/endpoints", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "'data/leak.txt' is a symbolic link to a path outside the source" in error["message"]
    assert error["details"]["link"] == "data/leak.txt"

    (source / "data" / "leak.txt").unlink()
    (source / "etc").symlink_to("/etc", target_is_directory=True)
    response = await deployer.client.post("/api/v1/endpoints", json=body)
    assert response.status_code == 400
    assert "'etc' is a symbolic link" in response.json()["error"]["message"]
    assert (await deployer.client.get("/api/v1/endpoints")).json() == {"endpoints": []}
    assert not (deployer.settings.data_dir / "archives").exists() or not any(
        (deployer.settings.data_dir / "archives").glob("*.tar.gz")
    )

    # Committed to git, the same link is refused from the clone.
    await asyncio.to_thread(_commit_all, source)
    clone = {**body, "source": f"file://{source}", "commit": "HEAD"}
    response = await deployer.client.post("/api/v1/endpoints", json=clone)
    assert response.status_code == 400, response.text
    assert "'etc' is a symbolic link" in response.json()["error"]["message"]

    (source / "etc").unlink()
    (source / "weights.txt").write_text("0.5")
    (source / "alias.txt").symlink_to("weights.txt")
    response = await deployer.client.post("/api/v1/endpoints", json=body)
    assert response.status_code == 201, response.text


def _commit_all(folder: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "links"]):
        subprocess.run(["git", "-C", str(folder), *args], check=True, env=env)


def test_archived_files_are_never_wider_than_0644(tmp_path: Path) -> None:
    """An executable or world-writable file is archived 0644, a folder 0755."""
    source = _source(tmp_path)
    script = source / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o4777)
    (source / "pkg").mkdir(mode=0o777)
    (source / "pkg").chmod(0o777)
    out = io.BytesIO()
    write_archive(source, out)
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as tar:
        modes = {member.name: stat.S_IMODE(member.mode) for member in tar.getmembers()}
    assert modes == {"pkg": 0o755, "predict.py": 0o644, "run.sh": 0o644}
