from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from llmos.store import Store


def test_migrations_are_idempotent_and_deployments_persist(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'llmos.db'}"
    store = Store(url)
    store.migrate()
    store.migrate()
    assert "deployments" in inspect(store.engine).get_table_names()
    assert "alembic_version" in inspect(store.engine).get_table_names()
    store.upsert_deployment("gemma", "gemma-3-270m", engine_settings={"slots": 4})
    store.upsert_deployment("gemma", "gemma-3-270m:prod", engine_settings={"slots": 2})
    store.close()

    reopened = Store(url)
    rows = reopened.list_deployments()
    assert [(d.name, d.model_ref, d.project, d.engine_settings) for d in rows] == [
        ("gemma", "gemma-3-270m:prod", "default", {"slots": 2})]
    assert reopened.get_deployment("gemma", project="other") is None
    reopened.close()
