"""``python -m cormorant.common.db <alembic command>``: see ``cormorant.common.db.migrate``."""

from cormorant.common.db.migrate import main

main()
