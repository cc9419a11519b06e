"""``cormorant-service migrate``: migrate the database, then record the first admin key.

Kubernetes (the ``cormorant-migrate`` Job) and Docker Compose (the ``migrate`` service) have no
``cormorant up`` to make the bootstrap admin key, so the operator chooses one, keeps it in a
secret, and this records its hash once; the alerts service gets a key of its own (its flows
call the gateway), recorded the same way, so it never holds the bootstrap key. It is
idempotent: a key already recorded (or revoked) is left as it is. The database is
``CORMORANT_DATABASE_URL`` as for every service.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sqlalchemy import select

from cormorant.common.auth import ADMIN_KEY_PREFIX, hash_token
from cormorant.common.db import create_engine, session_factory, upgrade, wait_for_database
from cormorant.common.db.models import AdminKey
from cormorant.common.db.models.auth import PREFIX_LENGTH
from cormorant.common.settings import CommonSettings

MIN_KEY_LENGTH = 24
"""Shortest admin key accepted: the prefix and enough random characters to resist guessing."""

PLACEHOLDER = "change-me"
"""Marks the dev overlay's published keys: anyone who reads the repository knows them."""


async def migrate(
    url: str,
    admin_key: str | None,
    *,
    timeout: float,  # noqa: ASYNC109
    alerts_key: str | None = None,
) -> str:
    """Migrate ``url`` to head and record ``admin_key`` (and the alerts service's own key,
    ``alerts_key``); say what was done."""
    await wait_for_database(url, timeout=timeout)
    await upgrade(url)
    if admin_key is None and alerts_key is None:
        return "migrated; no admin key given"
    if admin_key is not None and admin_key == alerts_key:
        raise SystemExit("the alerts key must differ from the bootstrap admin key")
    outcomes = ["migrated"]
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session, session.begin():
            for name, key in (("bootstrap", admin_key), ("alerts", alerts_key)):
                if key is None:
                    continue
                what = "admin key" if name == "bootstrap" else "alerts key"
                key_hash = hash_token(key)
                if await session.scalar(select(AdminKey.id).where(AdminKey.key_hash == key_hash)):
                    outcomes.append(f"the {what} was already recorded")
                    continue
                session.add(AdminKey(name=name, key_hash=key_hash, prefix=key[:PREFIX_LENGTH]))
                outcomes.append(f"{what} recorded")
    finally:
        await engine.dispose()
    return "; ".join(outcomes)


def read_key(path: Path, *, throwaway: bool = False) -> str:
    """The admin key in ``path``, refused with a message when it is unusable, or a published
    placeholder on a cluster not declared ``throwaway``."""
    key = path.read_text().strip()
    example = f"{ADMIN_KEY_PREFIX}$(openssl rand -hex 24)"
    if not key.startswith(ADMIN_KEY_PREFIX) or len(key) < MIN_KEY_LENGTH:
        raise SystemExit(
            f"{path}: an admin key starts with {ADMIN_KEY_PREFIX!r} and has at least "
            f"{MIN_KEY_LENGTH} characters, e.g. {example}"
        )
    if PLACEHOLDER in key and not throwaway:
        raise SystemExit(
            f"{path}: this admin key is a published placeholder ({PLACEHOLDER!r}); set a "
            f"random one, e.g. {example}, or pass --throwaway-cluster on a disposable dev "
            "cluster nobody else can reach"
        )
    return key


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, migrate, print the outcome."""
    parser = argparse.ArgumentParser(prog="cormorant-service migrate", description=__doc__)
    parser.add_argument("--admin-key-file", type=Path, help="file holding the first admin key")
    parser.add_argument(
        "--alerts-key-file",
        type=Path,
        help="file holding the alerts service's own admin key (CORMORANT_ALERTS_API_KEY)",
    )
    parser.add_argument(
        "--throwaway-cluster",
        action="store_true",
        help=f"accept keys containing {PLACEHOLDER!r} (the dev overlay's; never elsewhere)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the DB")
    args = parser.parse_args(argv)
    throwaway: bool = args.throwaway_cluster
    key = read_key(args.admin_key_file, throwaway=throwaway) if args.admin_key_file else None
    alerts_key = (
        read_key(args.alerts_key_file, throwaway=throwaway) if args.alerts_key_file else None
    )
    url = CommonSettings().database_url
    outcome = asyncio.run(migrate(url, key, timeout=args.timeout, alerts_key=alerts_key))
    print(outcome, file=sys.stderr)


if __name__ == "__main__":
    main()
