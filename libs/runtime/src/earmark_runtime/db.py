"""PostgreSQL access: one async pool per process and ordered, locked migrations."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)


async def open_pool(url: str, *, min_size: int = 1, max_size: int = 8) -> AsyncConnectionPool:
    async def configure(conn: AsyncConnection) -> None:
        await conn.set_autocommit(True)

    pool = AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        configure=configure,
        # A connection that died with a database restart is dropped here instead
        # of failing the call that would have used it.
        check=AsyncConnectionPool.check_connection,
        # Keep retrying in the background while PostgreSQL restarts.
        reconnect_timeout=3600,
        kwargs={"connect_timeout": 5},
    )
    await pool.open(wait=False)
    return pool


async def ping(pool: AsyncConnectionPool) -> bool:
    try:
        async with pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
        return True
    except Exception:
        return False


async def migrate(pool: AsyncConnectionPool, schema: str, migrations: Sequence[str]) -> int:
    """Apply `migrations[n:]` to `schema`, where n were applied before.

    An advisory lock serialises replicas starting together; each migration runs
    in its own transaction with its version row, so a crash leaves no half step.
    Returns the schema version reached.
    """
    lock_key = int.from_bytes(schema.encode()[:8].ljust(8, b"\0"), "big") & 0x7FFFFFFFFFFFFFFF
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        try:
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(sql.Identifier(schema))
            )
            cur = await conn.execute(
                sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(
                    sql.Identifier(schema)
                )
            )
            row = await cur.fetchone()
            current = int(row[0]) if row else 0
            for version, statement in enumerate(migrations, start=1):
                if version <= current:
                    continue
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL("SET LOCAL search_path TO {}, public").format(
                            sql.Identifier(schema)
                        )
                    )
                    await conn.execute(statement.encode())
                    await conn.execute(
                        sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (%s)").format(
                            sql.Identifier(schema)
                        ),
                        (version,),
                    )
                log.info("schema %s migrated to version %d", schema, version)
                current = version
            return current
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
