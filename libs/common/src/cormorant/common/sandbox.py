"""Containment of user code on this machine: its own uid, a private directory, limits.

Predict functions (worker and kafka-bridge replicas) and flow ``exec`` tasks run code we did
not write. Each process that runs it is given, by whoever starts it as root:

- an ``Identity``: a uid (and a gid of the same number) of its own, from a range kept for user
  code (``UidPool``), so that one replica cannot signal, trace or read another's processes or
  files, and ``RLIMIT_NPROC`` (which counts per uid) bounds that replica alone;
- a ``PrivateDir`` outside the platform's data directory: its own code, read-only to it
  (root-owned, readable through the identity's group), and a scratch directory it owns;
- ``Limits`` (``RLIMIT_DATA``, ``RLIMIT_NPROC``, ``RLIMIT_NOFILE``);
- an environment built from a whitelist (``contained_environment``), never the launcher's own.

``contain`` applies the limits, ``no_new_privs`` and the identity to the calling process; a
change of every uid from root to another drops all capabilities, and ``contain`` checks that
it did. Everything here runs before the user's code is imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import resource
import shutil
import stat
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MEMORY_MB = 4096
"""Data segment (heap and anonymous mappings) one process of user code may map."""
DEFAULT_MAX_PROCESSES = 256
"""Processes and threads one identity may run at once (a replica's workers and their threads
count too)."""
DEFAULT_OPEN_FILES = 1024
"""File descriptors one process of user code may hold."""

DEFAULT_UID_BASE = 61000
"""First uid of the range kept for user code: below 65534, so it exists in a user namespace
that maps only 16-bit ids, and above the ranges distributions give to people and services."""
DEFAULT_UID_COUNT = 1000

CODE_DIR = "version"
SCRATCH_DIR = "scratch"
USER_NAME = "cormorant-user-code"
"""What ``USER``/``LOGNAME`` say in a contained process (its uid has no passwd entry)."""

# Variables a process needs to run at all, taken from the launcher's environment.
BASE_VARIABLES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")

_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39


class ContainmentError(Exception):
    """The process could not be contained as asked; it must not run user code."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one process of user code (``resources`` of an endpoint)."""

    memory_mb: int = DEFAULT_MEMORY_MB
    max_processes: int = DEFAULT_MAX_PROCESSES
    open_files: int = DEFAULT_OPEN_FILES

    def apply(self) -> None:
        """Set the rlimits on this process (inherited by everything it forks)."""
        lower_limit(resource.RLIMIT_DATA, self.memory_mb * 1024 * 1024)
        lower_limit(resource.RLIMIT_NPROC, self.max_processes)
        lower_limit(resource.RLIMIT_NOFILE, self.open_files)

    def to_mapping(self) -> dict[str, int]:
        """The limits as JSON fields."""
        return {"memory_mb": self.memory_mb, "max_processes": self.max_processes,
                "open_files": self.open_files}  # fmt: skip

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Limits:
        """Limits from JSON fields; missing ones take the defaults."""
        values = values or {}
        return cls(
            memory_mb=int(values.get("memory_mb") or DEFAULT_MEMORY_MB),
            max_processes=int(values.get("max_processes") or DEFAULT_MAX_PROCESSES),
            open_files=int(values.get("open_files") or DEFAULT_OPEN_FILES),
        )


def lower_limit(kind: int, value: int) -> None:
    """Set rlimit ``kind`` (soft and hard) to ``value``, or to the hard limit if lower."""
    # Never above the current hard limit: only root could raise it, and a lower one stands.
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


@dataclass(frozen=True, slots=True)
class Identity:
    """The uid and gid one process of user code runs as."""

    uid: int
    gid: int


def can_switch_user() -> bool:
    """Whether this process may give its children another uid (it runs as root)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def set_no_new_privs() -> None:
    """Forbid this process and its children ever gaining privileges (setuid files, file
    capabilities) through ``execve``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise ContainmentError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(code)}")


def set_undumpable() -> None:
    """Make this process (and what it forks) non-dumpable: a process of the same uid cannot
    read its memory or open its file descriptors through ``/proc``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise ContainmentError(f"prctl(PR_SET_DUMPABLE) failed: {os.strerror(code)}")


def no_new_privs() -> bool:
    """Whether ``no_new_privs`` is set on this process."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1)


def capabilities() -> dict[str, int]:
    """This process's capability sets (``CapInh``, ``CapPrm``, ``CapEff``, ``CapAmb``...)."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.startswith("Cap"):
                found[key] = int(value.strip(), 16)
    return found


def drop_privileges(identity: Identity) -> None:
    """Become ``identity`` for good: every uid and gid, no supplementary group, no capability."""
    try:
        os.setgroups([])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise ContainmentError(f"cannot switch to uid {identity.uid}: {exc}") from exc
    caps = capabilities()
    held = {key: value for key, value in caps.items()
            if key in ("CapPrm", "CapEff", "CapAmb") and value}  # fmt: skip
    if held:
        raise ContainmentError(f"capabilities survived the switch to uid {identity.uid}: {held}")


def contain(identity: Identity | None, limits: Limits) -> None:
    """Apply ``limits``, ``no_new_privs`` and (when given) ``identity`` to this process."""
    try:
        limits.apply()
    except (OSError, ValueError) as exc:
        raise ContainmentError(f"cannot set the resource limits {limits}: {exc}") from exc
    set_no_new_privs()
    if identity is not None:
        drop_privileges(identity)
    set_undumpable()


def contained_environment(
    launcher: Mapping[str, str],
    own: Mapping[str, str],
    *,
    home: Path | None,
) -> dict[str, str]:
    """A contained process's environment: ``BASE_VARIABLES`` from ``launcher``, then ``own``
    (its own settings, chosen by the caller), with ``HOME`` and ``TMPDIR`` in its scratch."""
    env = {key: launcher[key] for key in BASE_VARIABLES if key in launcher}
    env.setdefault("PATH", os.defpath)
    env["USER"] = env["LOGNAME"] = USER_NAME
    if home is not None:
        env["HOME"] = env["TMPDIR"] = str(home)
    env.update(own)
    return env


@dataclass(frozen=True, slots=True)
class PrivateDir:
    """A contained process's directory: ``root`` (root-owned, 0711), ``code`` (root-owned,
    the identity's group may read it), ``scratch`` (the identity's own)."""

    root: Path
    code: Path
    scratch: Path

    @classmethod
    def at(cls, root: Path) -> PrivateDir:
        """The layout under ``root``."""
        return cls(root, root / CODE_DIR, root / SCRATCH_DIR)

    def owner(self) -> int | None:
        """The uid that owns the scratch directory, if it exists."""
        try:
            return self.scratch.stat().st_uid
        except OSError:
            return None


class UidPool:
    """Uids ``base`` .. ``base + count - 1`` for user code; one is taken while a private
    directory is owned by it (so the choice survives the launcher's restart).

    Several stacks on one machine draw from the same range, and each sees only its own
    private directories: with ``claims`` (a directory every launcher on the machine shares) a
    uid is also claimed by a ``flock`` on ``claims/<uid>`` held from its choice until
    ``release``, so two launchers never choose one uid in the moment before either has a
    process running as it (after which one's clean-up of that uid would kill the other's).
    """

    def __init__(self, parent: Path, *, base: int = DEFAULT_UID_BASE,
                 count: int = DEFAULT_UID_COUNT, claims: Path | None = None) -> None:  # fmt: skip
        self.parent = parent
        self.base = base
        self.count = count
        self.claims = claims
        self._held: dict[int, int] = {}
        """Claimed uid → the descriptor holding its lock."""

    def taken(self) -> set[int]:
        """Uids owning a private directory under ``parent``, or running a process (another
        stack on this machine may use the same range)."""
        uids: set[int] = set()
        with contextlib.suppress(OSError):
            for entry in self.parent.iterdir():
                owner = PrivateDir.at(entry).owner()
                if owner is not None:
                    uids.add(owner)
        return uids | running_uids(range(self.base, self.base + self.count))

    def identity_for(self, private: PrivateDir, reserved: Collection[int] = ()) -> Identity:
        """The identity that owns ``private`` already, or the lowest free one that is not
        ``reserved`` (given to a private directory still being made)."""
        owner = private.owner()
        if owner is not None and self.base <= owner < self.base + self.count:
            if not self.claim(owner):
                # Chosen elsewhere while this launcher was down and the uid ran nothing.
                log.warning("uid %d of %s is claimed by another launcher too", owner, private.root)
            return Identity(owner, owner)
        taken = self.taken() | set(reserved)
        for uid in range(self.base, self.base + self.count):
            if uid not in taken and self.claim(uid):
                return Identity(uid, uid)
        raise ContainmentError(
            f"every uid of {self.base}..{self.base + self.count - 1} runs user code already"
        )

    def claim(self, uid: int) -> bool:
        """Claim ``uid`` for this launcher (True if it holds it now, or there are no claims)."""
        if self.claims is None or uid in self._held:
            return True
        try:
            self.claims.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.claims / str(uid), flags, 0o600)
        except OSError as exc:
            # No shared claims here (a read-only root...): this stack's own view must do.
            log.warning("uid %d not claimed in %s: %s", uid, self.claims, exc)
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._held[uid] = fd
        return True

    def release(self, uid: int) -> None:
        """Give ``uid`` back (its private directory is gone)."""
        fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)


def running_uids(among: range) -> set[int]:
    """The real uids in ``among`` that some process runs as (from ``/proc/*/status``: a
    non-dumpable process's ``/proc`` entry belongs to root whatever its uid)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with (
                contextlib.suppress(OSError, ValueError, IndexError),
                open(f"/proc/{entry.name}/status") as fh,
            ):
                for line in fh:
                    if line.startswith("Uid:"):
                        uid = int(line.split()[1])
                        if uid in among:
                            found.add(uid)
                        break
    return found


def prepare_private_dir(
    parent: Path, name: str, source: Path, identity: Identity | None
) -> PrivateDir:
    """Make (or refresh) ``parent/name``: a copy of ``source`` as its code and a scratch dir.

    Files are hard-linked from ``source`` where they are on the same file system and readable
    by anyone already (they stay root's: the contained process cannot change them), copied
    otherwise. The code is rebuilt on every call, so a restart serves the version as deployed.
    """
    _make_dir(parent, 0o711)
    private = PrivateDir.at(parent / name)
    _make_dir(private.root, 0o711)
    staging = private.root / f".{CODE_DIR}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    _copy_tree(source, staging)
    group = identity.gid if identity is not None else None
    if group is not None:
        os.chown(staging, 0, group)
    os.chmod(staging, 0o750 if group is not None else 0o755)
    old = private.root / f".{CODE_DIR}-old-{os.getpid()}"
    if private.code.exists():
        os.replace(private.code, old)
    os.replace(staging, private.code)
    shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(FileExistsError):
        private.scratch.mkdir(mode=0o700)
    if identity is not None:
        os.chown(private.scratch, identity.uid, identity.gid)
    os.chmod(private.scratch, 0o700)
    return private


def remove_private_dir(parent: Path, name: str) -> None:
    """Delete ``parent/name`` (its uid becomes free again)."""
    shutil.rmtree(parent / name, ignore_errors=True)


def _make_dir(path: Path, mode: int) -> None:
    with contextlib.suppress(FileExistsError):
        path.mkdir(parents=True, mode=mode)
    if can_switch_user():
        os.chown(path, 0, 0)
    os.chmod(path, mode)


def _copy_tree(source: Path, target: Path) -> None:
    target.mkdir(mode=0o755)
    for entry in os.scandir(source):
        dest = target / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dest)
        elif entry.is_dir():
            _copy_tree(Path(entry.path), dest)
        elif entry.is_file():
            _link_or_copy(Path(entry.path), dest, entry.stat())


def _link_or_copy(source: Path, dest: Path, info: os.stat_result) -> None:
    readable = info.st_mode & stat.S_IROTH and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if readable and info.st_uid == os.geteuid():
        try:
            os.link(source, dest)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
    shutil.copyfile(source, dest)
    os.chmod(dest, 0o755 if info.st_mode & stat.S_IXUSR else 0o644)


def close_to_others(path: Path, *, group_traverse: bool = False) -> None:
    """Make ``path`` (a platform data directory) unreachable to contained processes: 0700, or
    0710 when a server that keeps its files inside runs under another uid but this process's
    group (the embedded PostgreSQL: its uid changes, its gid does not). A contained process
    has neither that uid nor that group."""
    os.chmod(path, 0o710 if group_traverse else 0o700)


def open_path_for_others(paths: Iterable[Path]) -> list[Path]:
    """Let other uids traverse (not list) every directory above ``paths``, so that a
    contained process can run this interpreter and import the installed packages; the
    directories changed."""
    changed: list[Path] = []
    for path in paths:
        for parent in Path(os.path.realpath(path)).parents:
            try:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
                    changed.append(parent)
            except OSError:
                continue
    return changed


def runtime_paths() -> list[Path]:
    """What a Python process of this installation reads: the interpreter, its prefixes and
    every directory on ``sys.path``."""
    found = [Path(sys.executable), Path(sys.prefix), Path(sys.base_prefix)]
    found += [Path(entry) for entry in sys.path if entry and os.path.isabs(entry)]
    return found


def warn_uncontained(what: str, reasons: Iterable[str]) -> None:
    """Say loudly that user code runs with the launcher's own uid."""
    message = (
        f"!!! {what} run WITHOUT their own uid ({'; '.join(reasons)}): user code can read and "
        "change everything this process can. Run the stack as root to contain it. !!!"
    )
    log.warning(message)
    print(message, file=sys.stderr, flush=True)
