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
