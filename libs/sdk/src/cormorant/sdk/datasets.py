"""Datasets from Python: ``Datasets(Client()).upload("scores", "in.csv")``.

A dataset is a named, versioned collection of files; every upload (or batch job output) makes a
new immutable version that keeps the other files. A file is referenced as ``<dataset>/<path>``
(latest version) or ``<dataset>@<n>/<path>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cormorant.sdk.client import Client, CormorantAPIError


class Datasets:
    """``Datasets(client)``: create, list, versions, upload, download."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, name: str, *, exist_ok: bool = False) -> dict[str, Any] | None:
        """Create an empty dataset; with ``exist_ok`` an existing one is fine (None)."""
        try:
            created: dict[str, Any] = self._client.request(
                "POST", "/api/v1/datasets", json={"name": name}
            )
        except CormorantAPIError as exc:
            if exist_ok and exc.status_code == 409:
                return None
            raise
        return created

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of ``name``, oldest first, each with its files."""
        found: list[dict[str, Any]] = self._client.request(
            "GET", f"/api/v1/datasets/{name}/versions"
        )["versions"]
        return found

    def upload(self, name: str, file: str | Path, *, path: str | None = None) -> dict[str, Any]:
        """Add ``file`` (at ``path``, default its name) as a new version; that version."""
        local = Path(file)
        with local.open("rb") as handle:
            version: dict[str, Any] = self._client.request(
                "POST",
                f"/api/v1/datasets/{name}/files",
                data={"path": path or local.name},
                files={"file": (local.name, handle, "application/octet-stream")},
            )
        return version

    def download(self, reference: str, target: str | Path) -> Path:
        """Write the file ``<dataset>[@<n>]/<path>`` to ``target``; the path written."""
        head, _, path = reference.partition("/")
        name, _, number = head.partition("@")
        if not path or not name:
            raise ValueError(f"{reference!r} is not '<dataset>/<path>' or '<dataset>@<n>/<path>'")
        if not number:
            versions = self.versions(name)
            if not versions:
                raise ValueError(f"dataset {name!r} has no version yet")
            number = str(versions[-1]["version"])
        out = Path(target)
        with (
            self._client.stream(
                "GET", f"/api/v1/datasets/{name}/versions/{number}/files/{path}"
            ) as response,
            out.open("wb") as handle,
        ):
            for chunk in response.iter_bytes():
                handle.write(chunk)
        return out

    def list(self) -> list[dict[str, Any]]:
        """Every dataset with its latest version number."""
        found: list[dict[str, Any]] = self._client.request("GET", "/api/v1/datasets")["datasets"]
        return found
