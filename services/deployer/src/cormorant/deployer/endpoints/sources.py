"""Where an endpoint's code comes from: a local directory, or a git repository at a commit.

Either way the files are hostile input: a symbolic link that leads out of the source (to
``/etc/shadow``, the stack's secrets, another endpoint's code) is refused before anything is
archived, since the deployer would otherwise copy what it points at into a version every
replica can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cormorant.common.errors import BadRequest

# Schemes git may use for a source; ``ext::`` and friends would run commands on this host.
_GIT_URL_RE = re.compile(r"^(?:(?:https?|git|ssh|file)://\S+|[\w.-]+@[\w.-]+:\S+)$")
_ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
_COMMIT_RE = re.compile(r"^[\w][\w./-]{0,199}$")


@dataclass(frozen=True, slots=True)
class Checkout:
    """A directory holding the source's files, and the commit checked out for a git source."""

    directory: Path
    commit: str | None


def is_git_url(source: str) -> bool:
    """Whether ``source`` names a git repository rather than a local directory."""
    return _GIT_URL_RE.match(source) is not None


def check_source(source: str, commit: str | None) -> Path | None:
    """The resolved local directory of ``source`` (None for a git URL); refuse anything else."""
    if commit is not None and _COMMIT_RE.match(commit) is None:
        raise BadRequest(
            f"commit: {commit!r} is not a commit: give a sha, a tag or a branch name",
            details={"field": "commit"},
        )
    if is_git_url(source):
        return None
    path = Path(source).expanduser()
    if not path.is_absolute():
        raise BadRequest(
            f"source: {source!r} is neither an absolute directory path nor a git URL "
            "(https://, ssh://, git@host:repo or file://)",
            details={"field": "source"},
        )
    if not path.is_dir():
        raise BadRequest(
            f"source: the directory {source!r} does not exist on the deployer's machine",
            details={"field": "source"},
        )
    return path.resolve()


@contextlib.asynccontextmanager
async def checkout(
    source: str, commit: str | None, *, time_limit: float
) -> AsyncIterator[Checkout]:
    """The source's files: the directory itself, or a temporary clone checked out at ``commit``.

    A local directory with a ``commit`` is treated as a repository and cloned like a URL.
    """
    local = check_source(source, commit)
    if local is not None and commit is None:
        refuse_links_out(local)
        yield Checkout(local, None)
        return
    url = source if local is None else str(local)
    with tempfile.TemporaryDirectory(prefix="cormorant-src-") as tmp:
        clone = Path(tmp) / "src"
        target = commit or "HEAD"
        try:
            async with asyncio.timeout(time_limit):
                await _git(
                    "clone", "--quiet", "--no-checkout", "--", url, str(clone),
                    field="source", what=f"cloning {source}",
                )  # fmt: skip
                await _git(
                    "-C", str(clone), "checkout", "--quiet", "--detach", target,
                    field="commit", what=f"checking out {target!r} of {source}",
                )  # fmt: skip
                resolved = await _git(
                    "-C", str(clone), "rev-parse", "HEAD", field="commit", what="reading HEAD"
                )
        except TimeoutError as exc:
            raise BadRequest(
                f"source: cloning {source} at {target!r} took longer than {time_limit:g} s",
                details={"field": "source"},
            ) from exc
        refuse_links_out(clone)
        yield Checkout(clone, resolved.strip())


def refuse_links_out(root: Path) -> None:
    """Refuse (400, naming it) a symbolic link under ``root`` that resolves outside it.

    Links that stay inside are kept (the archive holds what they point at); a dangling link
    is archived as nothing.
    """
    root = root.resolve()
    for current, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(current) / name
            if not path.is_symlink():
                continue
            shown = path.relative_to(root).as_posix()
            try:
                target = path.resolve(strict=True)
            except FileNotFoundError:
                continue
            except (OSError, RuntimeError) as exc:  # a loop of links
                raise BadRequest(
                    f"source: {shown!r} is a symbolic link that cannot be resolved ({exc}); "
                    "remove it or replace it with the file itself",
                    details={"field": "source", "link": shown},
                ) from exc
            if not target.is_relative_to(root):
                raise BadRequest(
                    f"source: {shown!r} is a symbolic link to a path outside the source "
                    "folder; copy the file into the folder instead of linking to it",
                    details={"field": "source", "link": shown},
                )


async def _git(*args: str, field: str, what: str) -> str:
    env = {
        **os.environ,
        # A clone must never wait for a password on a terminal nobody watches.
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_ALLOW_PROTOCOL": _ALLOWED_PROTOCOLS,
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except FileNotFoundError as exc:
        raise BadRequest(
            f"{field}: git sources need the git program on the deployer's machine",
            details={"field": field},
        ) from exc
    try:
        out, err = await proc.communicate()
    except BaseException:
        # Timed out or cancelled: leave no git process behind.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        detail = "; ".join(line for line in message[-3:] if line) or f"exit {proc.returncode}"
        raise BadRequest(f"{field}: {what} failed: {detail}", details={"field": field})
    return out.decode(errors="replace")
