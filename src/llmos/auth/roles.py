"""Roles and the principal a request acts as.

- ``user``: inference on its project's deployments, reading its project's models;
- ``operator``: also deploys, scales and manages models and deployments in its project;
- ``admin``: everything, in every project: nodes, workers, keys, logs;
- ``node``: a join token, held by an agent or worker process: it joins the cluster and
  reads the models its replicas load, in any project, and nothing else (outside the
  order above: it is no user).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Role(IntEnum):
    node = 0
    user = 1
    operator = 2
    admin = 3


@dataclass(frozen=True)
class Principal:
    key_id: str | None
    """None: nobody (the server runs open, with no keys)."""
    name: str
    role: Role
    project: str

    def may(self, needed: Role, *, nodes: bool = False) -> bool:
        """Whether it may use an endpoint that needs ``needed`` (and lets join tokens in,
        with ``nodes``)."""
        if self.role is Role.node:
            return nodes or needed is Role.node
        if needed is Role.node:
            return self.role is Role.admin  # (an admin may join a node too)
        return self.role >= needed

    def sees(self, project: str) -> bool:
        """Whether objects of ``project`` exist for it (others are 404s, not 403s). A node
        serves every project: the few endpoints it may use read."""
        return self.role in (Role.admin, Role.node) or project == self.project


OPEN = Principal(key_id=None, name="anonymous (open server)", role=Role.admin,
                 project="default")
"""What every request acts as while the server runs open (loopback, no keys)."""
