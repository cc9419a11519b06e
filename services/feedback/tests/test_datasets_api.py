"""The datasets API end to end: real PostgreSQL, files in a local directory, app lifespan run."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from cormorant.common.datasets import CHUNK_SIZE
from cormorant.common.internal import generate_internal_secret
from cormorant.feedback.app import create_app
from cormorant.feedback.settings import FeedbackSettings

API = "/api/v1/datasets"
LIMIT = 4 << 20


@pytest.fixture
async def client(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a running Feedback app storing datasets under ``tmp_path``."""
    settings = FeedbackSettings(
        database_url=database_url,
        data_dir=tmp_path,
        log_json=False,
        max_upload_bytes=LIMIT,
        publish_events=False,
        internal_secret=generate_internal_secret(),
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        # As a header, not auth=: one test below builds a raw ASGI request from it.
        secret = settings.internal_secret
        assert secret is not None
        headers = {"Authorization": f"Bearer {secret.get_secret_value()}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://svc", headers=headers
        ) as http:
            http.app = manager.app  # type: ignore[attr-defined]
            yield http


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]["message"]
    return message


async def test_round_trip(client: httpx.AsyncClient, tmp_path: Path) -> None:
    """Create, upload twice, list versions, download: every version keeps its files."""
    created = await client.post(API, json={"name": "churn"})
    assert created.status_code == 201, created.text
    assert created.json()["latest_version"] is None
    assert "already exists" in _error(await client.post(API, json={"name": "churn"}), 409)

    big = os.urandom(3 << 20)
    first = await client.post(f"{API}/churn/files", files={"file": ("input.csv", b"a,b\n1,2\n")})
    assert first.status_code == 201, first.text
    assert first.json()["version"] == 1
    second = await client.post(
        f"{API}/churn/files",
        files={"file": ("ignored.bin", big, "application/octet-stream")},
        data={"path": "raw/big.bin"},
    )
    assert second.status_code == 201, second.text
    body = second.json()
    assert body["dataset"] == "churn"
    assert body["version"] == 2
    assert [(f["path"], f["size"]) for f in body["files"]] == [
        ("input.csv", 8),
        ("raw/big.bin", len(big)),
    ]
    assert body["files"][1]["sha256"] == hashlib.sha256(big).hexdigest()

    listed = (await client.get(API)).json()
    assert [(d["name"], d["latest_version"]) for d in listed["datasets"]] == [("churn", 2)]
    versions = (await client.get(f"{API}/churn/versions")).json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert [f["path"] for f in versions[0]["files"]] == ["input.csv"]
    assert versions[0]["created_at"] <= versions[1]["created_at"]

    csv = await client.get(f"{API}/churn/versions/1/files/input.csv")
    assert csv.status_code == 200
    assert csv.content == b"a,b\n1,2\n"
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.headers["content-length"] == "8"
    assert 'filename="input.csv"' in csv.headers["content-disposition"]

    download = await client.get(f"{API}/churn/versions/2/files/raw/big.bin")
    assert download.status_code == 200
    assert download.content == big
    assert download.headers["etag"] == f'"{hashlib.sha256(big).hexdigest()}"'

    # Blobs: the small CSV and the big file, once each, under the default local directory.
    assert len([p for p in (tmp_path / "datasets" / "blobs").rglob("*") if p.is_file()]) == 2


async def test_download_is_streamed_in_chunks(client: httpx.AsyncClient) -> None:
    """A multi-megabyte file leaves the app as several body messages, none larger than a chunk."""
    await client.post(API, json={"name": "stream"})
    data = os.urandom(3 * CHUNK_SIZE + 123)
    upload = await client.post(f"{API}/stream/files", files={"file": ("x.bin", data)})
    assert upload.status_code == 201, upload.text

    app: FastAPI = client.app  # type: ignore[attr-defined]
    sizes: list[int] = []
    received = bytearray()
    requested = False
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # The response watches for a disconnect meanwhile: the client leaves once served.
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sizes.append(len(message.get("body", b"")))
            received.extend(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    path = f"{API}/stream/versions/1/files/x.bin"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"svc"),
            (b"authorization", client.headers["authorization"].encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("svc", 80),
        "state": {},
    }
    await app(scope, receive, send)
    assert bytes(received) == data
    assert len([s for s in sizes if s]) >= 4
    assert max(sizes) <= CHUNK_SIZE


async def test_upload_limit_is_413_and_leaves_nothing(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Past max_upload_bytes (declared or counted while streaming): 413, no version, no blob."""
    await client.post(API, json={"name": "limits"})
    way_over = await client.post(f"{API}/limits/files", files={"file": ("a", b"x" * (2 * LIMIT))})
    assert "larger than the limit" in _error(way_over, 413)
    just_over = await client.post(f"{API}/limits/files", files={"file": ("a", b"x" * (LIMIT + 1))})
    assert "larger than the limit" in _error(just_over, 413)
    assert (await client.get(f"{API}/limits/versions")).json() == {"versions": []}
    storage = tmp_path / "datasets"
    assert [p for p in storage.rglob("*") if p.is_file()] == []


async def test_bad_requests_say_what_to_fix(client: httpx.AsyncClient) -> None:
    """Each bad input gets a 4xx whose message names the problem."""
    assert "dataset name" in _error(await client.post(API, json={"name": "Bad Name"}), 400)
    assert "name" in _error(await client.post(API, json={}), 400)
    assert "does not exist" in _error(
        await client.post(f"{API}/ghost/files", files={"file": ("a.csv", b"1")}), 404
    )
    await client.post(API, json={"name": "ds"})
    url = f"{API}/ds/files"
    traversal = await client.post(url, files={"file": ("a", b"1")}, data={"path": "../etc/x"})
    assert "'..'" in _error(traversal, 400)
    absolute = await client.post(url, files={"file": ("a", b"1")}, data={"path": "/etc/x"})
    assert "relative" in _error(absolute, 400)
    assert "multipart/form-data" in _error(await client.post(url, content=b"raw"), 400)
    assert "no field 'file'" in _error(await client.post(url, files={"path": (None, "a")}), 400)
    unknown = await client.post(url, files={"file": ("a", b"1"), "extra": (None, "x")})
    assert "unknown form field 'extra'" in _error(unknown, 400)
    truncated = await client.post(
        url,
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n12',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert "resend" in _error(truncated, 400)
    assert (await client.get(f"{API}/ds/versions")).json() == {"versions": []}

    await client.post(url, files={"file": ("a.csv", b"1")})
    assert "versions" not in _error(await client.get(f"{API}/ds/versions/1/files/b.csv"), 404)
    missing_file = await client.get(f"{API}/ds/versions/1/files/b.csv")
    assert "its files are 'a.csv'" in _error(missing_file, 404)
    missing_version = await client.get(f"{API}/ds/versions/9/files/a.csv")
    assert "only version 1" in _error(missing_version, 404)
    # Past PostgreSQL's integer (the fuzzer's 500): still just a version that does not exist.
    for huge in (2**31, 10**30, 0, -1):
        beyond = await client.get(f"{API}/ds/versions/{huge}")
        assert "has no version" in _error(beyond, 404)
        assert _error(await client.get(f"{API}/ds/versions/{huge}/files/a.csv"), 404)
    assert "integer" in _error(await client.get(f"{API}/ds/versions/latest/files/a.csv"), 400)
