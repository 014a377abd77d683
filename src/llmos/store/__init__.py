"""Cluster state in SQL (SQLite embedded, PostgreSQL for a cluster): deployments, nodes,
replicas, events and leases."""

from llmos.store.db import Store
from llmos.store.tables import Deployment

__all__ = ["Deployment", "Store"]
