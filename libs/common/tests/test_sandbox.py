"""The containment primitives, checked from a real process that switched to a replica's uid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cormorant.common import sandbox
from cormorant.common.sandbox import Identity, Limits, PrivateDir, UidPool

pytestmark = pytest.mark.skipif(
    not sandbox.can_switch_user(), reason="switching to another uid needs root"
)

UID = 61990
OTHER = 61991

_REPORT = """
import json, os, resource, sys
from cormorant.common import sandbox
identity = sandbox.Identity({uid}, {uid})
sandbox.contain(identity, sandbox.Limits(memory_mb=512, max_processes=40, open_files=100))
caps = sandbox.capabilities()
print(json.dumps({{
    "uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(),
    "caps": [caps["CapPrm"], caps["CapEff"], caps["CapAmb"]],
    "no_new_privs": sandbox.no_new_privs(),
    "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    "data": resource.getrlimit(resource.RLIMIT_DATA),
}}))
"""


def _run_as(uid: int, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    sandbox.open_path_for_others(sandbox.runtime_paths())
    env = sandbox.contained_environment(os.environ, {}, home=None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
        user=uid, group=uid, extra_groups=[], timeout=60, check=False,
    )  # fmt: skip


def test_contain_switches_uid_drops_every_capability_and_sets_the_limits(tmp_path: Path) -> None:
    """A root process that calls ``contain`` ends with the identity's ids only, no capability,
    ``no_new_privs`` and the limits asked for."""
    sandbox.open_path_for_others([*sandbox.runtime_paths(), tmp_path / "x"])
    result = subprocess.run(
        [sys.executable, "-c", _REPORT.format(uid=UID)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["uid"] == [UID, UID, UID]
    assert report["gid"] == [UID, UID, UID]
    assert report["groups"] == []
    assert report["caps"] == [0, 0, 0]
    assert report["no_new_privs"] is True
    assert report["nproc"] == [40, 40]
    assert report["nofile"] == [100, 100]
    assert report["data"] == [512 * 1024 * 1024] * 2


def test_private_dir_is_readable_by_its_identity_only_and_never_writable(tmp_path: Path) -> None:
    """The code copy reads as its identity, cannot be changed by it, and is closed to another
    uid; the scratch directory is the identity's own."""
    source = tmp_path / "source"
    (source / "pkg").mkdir(parents=True)
    (source / "predict.py").write_text("def predict(x):\n    return x\n")
    (source / "pkg" / "data.txt").write_text("weights")
    parent = tmp_path / "replicas"
    sandbox.open_path_for_others([parent / "x"])
    private = sandbox.prepare_private_dir(parent, "r1", source, Identity(UID, UID))
    assert (private.code / "pkg" / "data.txt").read_text() == "weights"
    assert private.scratch.stat().st_uid == UID
    assert UidPool(parent, base=UID, count=2).identity_for(private) == Identity(UID, UID)

    probe = (
        "import json\n"
        "def attempt(call):\n"
        "    try:\n        call()\n    except OSError as exc:\n        return type(exc).__name__\n"
        "    return 'ok'\n"
        f"code = {str(private.code)!r}\n"
        f"scratch = {str(private.scratch)!r}\n"
        "print(json.dumps({\n"
        "  'read': attempt(lambda: open(code + '/predict.py').read()),\n"
        "  'write': attempt(lambda: open(code + '/predict.py', 'a').write('x')),\n"
        "  'create': attempt(lambda: open(code + '/new.py', 'w').close()),\n"
        "  'scratch': attempt(lambda: open(scratch + '/tmp.txt', 'w').close()),\n"
        "}))\n"
    )
    own = json.loads(_run_as(UID, probe, Path("/")).stdout)
    assert own == {"read": "ok", "write": "PermissionError", "create": "PermissionError",
                   "scratch": "ok"}  # fmt: skip
    other = json.loads(_run_as(OTHER, probe, Path("/")).stdout)
    assert other["read"] == "PermissionError"
    assert other["scratch"] == "PermissionError"


def test_uid_pool_gives_each_private_dir_its_own_uid(tmp_path: Path) -> None:
    """A new private directory gets the lowest uid no other one owns; all taken is an error."""
    source = tmp_path / "source"
    source.mkdir()
    parent = tmp_path / "replicas"
    pool = UidPool(parent, base=UID, count=2)
    first = pool.identity_for(PrivateDir.at(parent / "a"))
    # One still being made is reserved by its launcher: another start gets the next uid.
    assert pool.identity_for(PrivateDir.at(parent / "b"), [first.uid]).uid != first.uid
    sandbox.prepare_private_dir(parent, "a", source, first)
    second = pool.identity_for(PrivateDir.at(parent / "b"))
    assert {first.uid, second.uid} == {UID, OTHER}
    sandbox.prepare_private_dir(parent, "b", source, second)
    with pytest.raises(sandbox.ContainmentError, match="runs user code already"):
        pool.identity_for(PrivateDir.at(parent / "c"))
    sandbox.remove_private_dir(parent, "a")
    assert pool.identity_for(PrivateDir.at(parent / "c")) == first


def test_two_launchers_sharing_the_uid_range_never_choose_the_same_uid(tmp_path: Path) -> None:
    """Two stacks on one machine (each its own private directories, one claims directory):
    before either has a process running as a uid, the second never gets the first's."""
    claims = tmp_path / "claims"
    one = UidPool(tmp_path / "stack-one", base=UID, count=2, claims=claims)
    two = UidPool(tmp_path / "stack-two", base=UID, count=2, claims=claims)
    first = one.identity_for(PrivateDir.at(one.parent / "a"))
    second = two.identity_for(PrivateDir.at(two.parent / "b"))
    assert second.uid == OTHER != first.uid
    # "b" is still being made (reserved by its launcher): "c" finds no uid free.
    with pytest.raises(sandbox.ContainmentError, match="runs user code already"):
        two.identity_for(PrivateDir.at(two.parent / "c"), [second.uid])
    one.release(first.uid)  # its replica and private directory are gone
    assert two.identity_for(PrivateDir.at(two.parent / "c"), [second.uid]) == first


def test_contained_environment_keeps_only_the_whitelist() -> None:
    """Only the basic variables of the launcher pass; the process's own settings are added."""
    launcher = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "CORMORANT_DATABASE_URL": "postgres://x",
                "CORMORANT_DATA_DIR": "/srv/data", "AWS_SECRET_ACCESS_KEY": "s"}  # fmt: skip
    env = sandbox.contained_environment(launcher, {"CORMORANT_NATS_URL": "nats://n"},
                                        home=Path("/r/scratch"))  # fmt: skip
    assert env == {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "USER": sandbox.USER_NAME,
        "LOGNAME": sandbox.USER_NAME, "HOME": "/r/scratch", "TMPDIR": "/r/scratch",
        "CORMORANT_NATS_URL": "nats://n",
    }  # fmt: skip


def test_limits_from_a_partial_mapping_take_the_defaults() -> None:
    """An endpoint stored with some limits gets the defaults for the others."""
    limits = Limits.from_mapping({"memory_mb": 300})
    assert limits == Limits(300, sandbox.DEFAULT_MAX_PROCESSES, sandbox.DEFAULT_OPEN_FILES)
