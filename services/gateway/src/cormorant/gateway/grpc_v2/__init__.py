"""Generated Open Inference Protocol gRPC messages (see scripts/generate_grpc.py)."""
