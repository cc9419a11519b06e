"""Regenerate the Open Inference Protocol's gRPC messages (``open_inference_v2_pb2.py`` and its
``.pyi``) from ``grpc_v2/open_inference_v2.proto`` with grpcio-tools (a dev dependency).

The generated modules are committed: the gateway image needs no protoc. Run from anywhere:
``.venv/bin/python services/gateway/scripts/generate_grpc.py``. The service itself is wired
by hand in ``cormorant/gateway/v2_grpc.py``, so no ``_pb2_grpc`` module is generated.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cormorant" / "gateway" / "grpc_v2"


def main() -> int:
    """Run protoc on the proto file, writing next to it."""
    return protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PACKAGE}",
            f"--python_out={PACKAGE}",
            f"--pyi_out={PACKAGE}",
            str(PACKAGE / "open_inference_v2.proto"),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
