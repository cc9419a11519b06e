"""A job's CSV files: the input cut into record batches, the output written in order."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from cormorant.common.datasets import validate_path
from cormorant.common.datasets.blobs import BlobWriter
from cormorant.common.errors import BadRequest
from cormorant.common.predictor.arrow_rows import prediction_cells

if TYPE_CHECKING:
    import pyarrow as pa

_BLOCK_BYTES = 1 << 20
_CHUNK_BYTES = 2 << 20
_FIRST_CHUNK_ROWS = 1000


def slices(handle: IO[bytes], reference: str, rows: int) -> Generator[pa.RecordBatch, None, None]:
    """The CSV's record batches cut to at most ``rows`` rows; malformed → ``BadRequest``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with handle:
        try:
            reader = pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES))
            # The first chunks are small and double: replicas start on the first rows sooner.
            ramp = _FIRST_CHUNK_ROWS
            for batch in reader:
                # Wide rows get smaller chunks, so a request stays well under the worker's
                # body limit (JSON is about twice the size of the Arrow columns).
                per_row = max(batch.nbytes // max(batch.num_rows, 1), 1)
                most = max(1, min(rows, _CHUNK_BYTES // per_row))
                start = 0
                while start < batch.num_rows:
                    chunk = batch.slice(start, min(most, ramp))
                    ramp = min(ramp * 2, rows)
                    start += chunk.num_rows
                    yield chunk
        except pa.ArrowInvalid as exc:
            raise BadRequest(
                f"{reference} is not a valid CSV file ({exc}); give a header line and rows "
                "with the same number of columns"
            ) from exc


async def write_csv(output: BlobWriter, table: pa.RecordBatch, *, header: bool) -> None:
    """Append ``table``'s rows to the output as CSV (with the header line if ``header``)."""

    def encode() -> bytes:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=header))
        data: bytes = sink.getvalue().to_pybytes()
        return data

    await output.write(await asyncio.to_thread(encode))


def json_results(content: bytes, rows: int) -> tuple[pa.Array, pa.Array]:
    """A JSON answer's results as the output's ``prediction`` cells and ``error`` column."""
    import pyarrow as pa

    try:
        results: list[dict[str, Any]] = orjson.loads(content)["results"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"the answer is not JSON with 'results' ({exc})") from exc
    if len(results) != rows:
        raise ValueError(f"the answer has {len(results)} results for {rows} rows")
    predictions = prediction_cells([r.get("prediction") for r in results])
    return predictions, pa.array([r.get("error") for r in results], pa.string())


def check_output(path: str) -> str:
    """``path`` if it is a relative path that stays inside a directory (``BadRequest`` else)."""
    try:
        validate_path(path)
    except BadRequest as exc:
        raise BadRequest(f"output_file: {exc.message}") from exc
    # A symlink cannot exist inside a dataset (its files are content-addressed blobs); this
    # refuses the path anyway if one resolves out of a fresh directory.
    with tempfile.TemporaryDirectory() as root:
        base = Path(root).resolve()
        if not (base / path).resolve().is_relative_to(base):
            raise BadRequest(f"output_file {path!r} escapes the dataset; give a relative path")
    return path
