"""Cluster state (deployments now; nodes, replicas, keys and events later) in SQL."""

from llmos.store.db import Store
from llmos.store.tables import Deployment

__all__ = ["Deployment", "Store"]
