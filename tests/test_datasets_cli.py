"""``cormorant datasets``: create, upload, list versions and download through the gateway."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Stack


def test_datasets_round_trip_with_the_cli(stack: Stack, tmp_path: Path) -> None:
    """Each upload is a new version; a reference downloads the file as uploaded."""
    source = tmp_path / "rows.csv"
    source.write_text("x,y\n1,2\n")
    assert stack.cli("datasets", "create", "cli-rows").returncode == 0
    first = stack.cli("datasets", "upload", "cli-rows", str(source), "--path", "in/rows.csv")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "cli-rows@1/in/rows.csv"
    source.write_text("x,y\n3,4\n")
    assert stack.cli("datasets", "upload", "cli-rows", str(source)).stdout.strip() == (
        "cli-rows@2/rows.csv"
    )

    listed = stack.cli("datasets", "versions", "cli-rows")
    assert "in/rows.csv" in listed.stdout
    assert "rows.csv" in listed.stdout
    target = tmp_path / "back.csv"
    got = stack.cli("datasets", "download", "cli-rows@1/in/rows.csv", str(target))
    assert got.returncode == 0, got.stderr
    assert target.read_text() == "x,y\n1,2\n"
    assert stack.cli("datasets", "download", "cli-rows/rows.csv", str(target)).returncode == 0
    assert target.read_text() == "x,y\n3,4\n"

    missing = stack.cli("datasets", "upload", "no-such-set", str(source))
    assert missing.returncode == 1
    assert "404" in missing.stderr
