"""CSV export: every row, constant memory, re-importable, escaped against formula injection."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import psutil

from cormorant.predictlog.export import HEADER
from cormorant.predictlog.testing import LogKit, ServiceProcess, minutes_ago

ROWS = 100_000
MB = 1024 * 1024


async def test_100000_rows_stream_in_bounded_memory_and_reimport(
    kit: LogKit, spawn: Callable[[str, str], ServiceProcess], tmp_path: Path
) -> None:
    """The export of 100,000 rows grows the server's RSS by < 50 MB and reads back whole."""
    start = minutes_ago(60)
    specials = {
        0: {"input": '=HYPERLINK("http://evil.example","click")', "error": "=cmd|' /C calc'!A0"},
        1: {"input": -7, "output": {"label": "x", "scores": [0.5, 0.25]}},
        2: {"request_id": "@SUM(1+1)", "trace_id": "+1-555-0100"},
        3: {"error": "\tindented", "output": "-1"},
    }

    def rows():  # type: ignore[no-untyped-def]
        for i in range(ROWS):
            yield kit.row(i, start + timedelta(milliseconds=30 * i), **specials.get(i, {}))

    assert await kit.copy(rows()) == ROWS
    service = spawn(kit.nats_url, kit.database_url)
    await service.start()
    process = psutil.Process(service.pid)
    url = f"{service.url}/api/v1/endpoints/iris/logs.csv"
    async with httpx.AsyncClient(timeout=120, auth=service.auth) as http:
        # Warm up the path (imports, pool connections, caches) before the baseline.
        warm = await http.get(url, params={"until": (start + timedelta(seconds=30)).isoformat()})
        assert warm.status_code == 200
        baseline = peak = process.memory_info().rss
        path = tmp_path / "export.csv"
        with path.open("wb") as out:
            async with http.stream("GET", url) as answer:
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/csv")
                async for chunk in answer.aiter_raw():
                    out.write(chunk)
                    peak = max(peak, process.memory_info().rss)
    growth = peak - baseline
    print(f"export of {ROWS:,} rows: server RSS grew by {growth / MB:.1f} MB")  # for the record
    assert growth < 50 * MB, f"RSS grew by {growth / MB:.1f} MB"

    with path.open(newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert table[0] == list(HEADER)
    assert len(table) - 1 == ROWS
    cells = {row[0]: dict(zip(HEADER, row, strict=True)) for row in table[1:4]}
    first = cells[kit.row(0, start).request_id]
    # A JSON string cell starts with its quote, which no spreadsheet evaluates; the error
    # text starting with "=" is what would run, and it is escaped.
    assert first["input"] == '"=HYPERLINK(\\"http://evil.example\\",\\"click\\")"'
    assert first["error"] == "'=cmd|' /C calc'!A0"
    second = cells[kit.row(1, start).request_id]
    assert second["input"] == "'-7"
    assert second["output"] == '{"label":"x","scores":[0.5,0.25]}'
    third = cells["'@SUM(1+1)"]
    assert third["trace_id"] == "'+1-555-0100"
    fourth = table[4]
    assert fourth[HEADER.index("error")] == "'\tindented"
    assert fourth[HEADER.index("output")] == '"-1"'
    assert json.loads(table[-1][HEADER.index("input")]) == {"i": ROWS - 1}


async def test_export_applies_the_filters_oldest_first(
    client: httpx.AsyncClient, kit: LogKit
) -> None:
    """The same filters as the logs; rows come oldest first with every column."""
    start = minutes_ago(30)
    await kit.copy(
        kit.row(i, start + timedelta(seconds=i), version=1 + i % 2, latency_ms=1.25)
        for i in range(10)
    )
    answer = await client.get("/api/v1/endpoints/iris/logs.csv", params={"version": "2"})
    assert answer.status_code == 200
    assert 'filename="iris-predictions.csv"' in answer.headers["content-disposition"]
    table = list(csv.reader(io.StringIO(answer.text)))
    assert table[0] == list(HEADER)
    assert [row[0] for row in table[1:]] == [kit.row(i, start).request_id for i in range(1, 10, 2)]
    first = dict(zip(HEADER, table[1], strict=True))
    assert first["version"] == "2"
    assert first["status"] == "200"
    assert first["latency_ms"] == "1.25"
    assert first["input"] == '{"i":1}'
    assert first["output"] == "[1]"
    assert first["error"] == ""
    missing = await client.get("/api/v1/endpoints/nope/logs.csv")
    assert missing.status_code == 404
    bad = await client.get("/api/v1/endpoints/iris/logs.csv", params={"status": "teapot"})
    assert bad.status_code == 400
