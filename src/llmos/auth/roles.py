"""Roles and the principal a request acts as.

- ``user``: inference on its project's deployments, reading its project's models;
- ``operator``: also deploys, scales and manages models and deployments in its project;
- ``admin``: everything, in every project: nodes, workers, keys, logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Role(IntEnum):
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

    def may(self, needed: Role) -> bool:
        return self.role >= needed

    def sees(self, project: str) -> bool:
        """Whether objects of ``project`` exist for it (others are 404s, not 403s)."""
        return self.role is Role.admin or project == self.project


OPEN = Principal(key_id=None, name="anonymous (open server)", role=Role.admin,
                 project="default")
"""What every request acts as while the server runs open (loopback, no keys)."""
