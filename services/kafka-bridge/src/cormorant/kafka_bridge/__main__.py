"""``python -m cormorant.kafka_bridge``: run one replica of a stream endpoint."""

from cormorant.kafka_bridge.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
