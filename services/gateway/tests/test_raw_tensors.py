"""Raw tensor bytes as numpy (and so tritonclient) lays them out, both ways."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from cormorant.gateway import raw_tensors
from cormorant.gateway.raw_tensors import InvalidRawTensor

NUMERIC = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_numeric_tensors_round_trip_with_numpy(datatype: str) -> None:
    """Little-endian, row-major, no padding: what numpy's tobytes() gives on this machine."""
    values = np.array([0, 1, 2, 3, 1, 0], dtype=NUMERIC[datatype])
    raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
    decoded = raw_tensors.decode("x", datatype, raw)
    assert decoded == values.tolist()
    assert raw_tensors.encode(datatype, decoded) == raw


def test_bytes_tensors_as_tritonclient_serializes_them() -> None:
    """4-byte little-endian lengths; UTF-8 reaches predict as text, other bytes as Base64."""
    raw = serialize_byte_tensor(np.array([b"hello", "wörld".encode(), b"\xff\x00"], dtype=object))
    assert raw is not None
    assert raw_tensors.decode("t", "BYTES", raw.item()) == ["hello", "wörld", "/wA="]
    encoded = raw_tensors.encode("BYTES", ["hello", "wörld"])
    assert deserialize_bytes_tensor(encoded).tolist() == [b"hello", "wörld".encode()]


def test_malformed_raw_data_is_a_400() -> None:
    """A partial element or a BYTES length past the end names the input."""
    with pytest.raises(InvalidRawTensor, match="input 'x': 5 byte"):
        raw_tensors.decode("x", "FP32", b"\x00" * 5)
    with pytest.raises(InvalidRawTensor, match="runs past the data"):
        raw_tensors.decode("t", "BYTES", b"\x09\x00\x00\x00abc")
