"""A throwaway PostgreSQL database on the local server (trust auth), for store tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import require_service

HOST, PORT = "127.0.0.1", 5432
ADMIN_URL = f"postgresql://postgres@{HOST}:{PORT}/test"


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create a database of its own, yield its URL, drop it after."""
    require_service("PostgreSQL", HOST, PORT)
    import psycopg

    name = f"llmos_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{HOST}:{PORT}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
