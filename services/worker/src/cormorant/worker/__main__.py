"""``python -m cormorant.worker``: serve one model version."""

from cormorant.worker.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
