"""Tensors as raw bytes: the binary tensor data extension (REST) and ``raw_*_contents`` (gRPC).

Both carry a tensor's elements in row-major order, little-endian, with no padding; a ``BYTES``
element is a 4-byte little-endian length followed by its bytes; a ``BOOL`` one byte.
Text in ``BYTES`` is handed to predict as ``str`` when it is UTF-8, else as Base64 text (the
predict path carries JSON).
"""

from __future__ import annotations

import base64
import struct
import sys
from array import array
from typing import Any

from cormorant.common.errors import BadRequest

# array typecodes of the fixed-size datatypes (sizes checked at import below).
_TYPECODES = {
    "INT8": "b", "UINT8": "B", "INT16": "h", "UINT16": "H", "INT32": "i", "UINT32": "I",
    "INT64": "q", "UINT64": "Q", "FP32": "f", "FP64": "d",
}  # fmt: skip
_SIZES = {"INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "INT32": 4, "UINT32": 4,
          "INT64": 8, "UINT64": 8, "FP32": 4, "FP64": 8, "FP16": 2, "BOOL": 1}  # fmt: skip
assert all(array(code).itemsize == _SIZES[name] for name, code in _TYPECODES.items())
_SWAP = sys.byteorder != "little"


class InvalidRawTensor(BadRequest):
    """Raw tensor bytes that do not fit the tensor's datatype or shape."""

    code = "invalid_tensor"


def decode(name: str, datatype: str, raw: bytes | memoryview) -> list[Any]:
    """The elements of ``raw`` for a tensor of ``datatype``, flat."""
    if datatype == "BYTES":
        return [text(item) for item in _split_bytes(name, raw)]
    size = _SIZES.get(datatype)
    if size is None:
        raise InvalidRawTensor(f"input {name!r}: unknown datatype {datatype!r}")
    if len(raw) % size:
        raise InvalidRawTensor(
            f"input {name!r}: {len(raw)} byte(s) is not a whole number of {datatype} "
            f"elements ({size} byte(s) each)"
        )
    if datatype == "BOOL":
        return [b != 0 for b in bytes(raw)]
    if datatype == "FP16":
        return [v[0] for v in struct.iter_unpack("<e", raw)]
    values = array(_TYPECODES[datatype])
    values.frombytes(raw)
    if _SWAP:
        values.byteswap()
    return values.tolist()


def encode(datatype: str, values: list[Any]) -> bytes:
    """``values`` (flat) as the raw bytes of a tensor of ``datatype``."""
    if datatype == "BYTES":
        parts = []
        for value in values:
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    if datatype == "BOOL":
        return bytes(1 if v else 0 for v in values)
    if datatype == "FP16":
        return struct.pack(f"<{len(values)}e", *values)
    packed = array(_TYPECODES[datatype], values)
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


def _split_bytes(name: str, raw: bytes | memoryview) -> list[bytes]:
    view = memoryview(raw)
    items = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidRawTensor(f"input {name!r}: a BYTES element's length is cut off")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidRawTensor(
                f"input {name!r}: a BYTES element of {length} byte(s) runs past the data"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def text(data: bytes) -> str:
    """A ``BYTES`` element for predict: its text when UTF-8, else its Base64."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")
