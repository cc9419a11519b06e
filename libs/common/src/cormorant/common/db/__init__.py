"""The Cormorant database: models, migrations, engines, and the prediction-log helpers.

Importing this package opens nothing; engines are built by the caller::

    engine = create_engine(settings.database_url)
    await wait_for_database(settings.database_url, timeout=30)
    await upgrade(engine)
    sessions = session_factory(engine)
"""

from cormorant.common.db import models
from cormorant.common.db.base import Base
from cormorant.common.db.engine import (
    async_url,
    asyncpg_dsn,
    create_engine,
    session_factory,
    wait_for_database,
)
from cormorant.common.db.ingest import (
    CopyConnection,
    PredictionRow,
    copy_predictions,
    insert_predictions,
)
from cormorant.common.db.migrate import alembic_config, current_revision, downgrade, upgrade
from cormorant.common.db.partitions import (
    drop_prediction_partitions_before,
    ensure_prediction_partitions,
)

__all__ = [
    "Base",
    "CopyConnection",
    "PredictionRow",
    "alembic_config",
    "async_url",
    "asyncpg_dsn",
    "copy_predictions",
    "create_engine",
    "current_revision",
    "downgrade",
    "drop_prediction_partitions_before",
    "ensure_prediction_partitions",
    "insert_predictions",
    "models",
    "session_factory",
    "upgrade",
    "wait_for_database",
]
