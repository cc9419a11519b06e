"""The `cormorant` command's answers when there is nothing to talk to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_command_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    """No CORMORANT_URL and no local stack: one red line pointing at `make up`, exit 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORMORANT_")}
    env["CORMORANT_DATA_DIR"] = str(tmp_path)
    for args in (
        ["endpoints", "list"],
        ["stream", "status", "fraud"],
        ["datasets", "list"],
        ["triggers", "list"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "cormorant.sdk.cli", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "no Cormorant URL" in done.stderr
        assert "run `make up`" in done.stderr
        assert "Traceback" not in done.stderr


# Runs the CLI in an interpreter where `cormorant.devstack` cannot be imported, as in an
# environment that installed cormorant-sdk alone.
_WITHOUT_DEVSTACK = """
import importlib.abc, sys

class NoDevstack(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "cormorant.devstack" or name.startswith("cormorant.devstack."):
            raise ModuleNotFoundError(name)
        return None

sys.meta_path.insert(0, NoDevstack())
sys.argv = ["cormorant", *sys.argv[1:]]
from cormorant.sdk.cli import main
main()
"""


def test_up_without_the_devstack_package_says_how_to_install_it(tmp_path: Path) -> None:
    """`cormorant up` where only the SDK is installed: how to install the dev stack, exit 1
    (in the foreground, so that a missing check fails on the import instead of starting a stack)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORMORANT_")}
    env["CORMORANT_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DEVSTACK, "up", "--foreground"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "cormorant-devstack" in done.stderr
    assert "make install" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "logs").exists()
