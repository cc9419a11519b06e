"""``python -m cormorant.worker``: serve one model version."""

from cormorant.worker.cli import main

raise SystemExit(main())
