"""Which nodes are alive: each agent's latest status and when it was heard.

Pure bookkeeping with the time passed in. A node is lost once it has not been heard
for ``NODE_LOST_AFTER`` of its heartbeat intervals (the time is this process's, when
the status arrived, so clocks that differ between machines do not matter).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmos.bus import names
from llmos.bus.messages import NodeStatus


@dataclass(frozen=True)
class Heard:
    status: NodeStatus
    at: float

    def alive(self, now: float) -> bool:
        return now - self.at <= names.NODE_LOST_AFTER * self.status.interval_s


class NodeDirectory:
    def __init__(self) -> None:
        self._latest: dict[str, Heard] = {}

    def observe(self, status: NodeStatus, now: float) -> bool:
        """Record a status; True when it is news: a new node, a new epoch, or a replica
        that changed state."""
        known = self._latest.get(status.node)
        if known is not None and known.status.epoch == status.epoch \
                and status.sent_at < known.status.sent_at:
            return False  # an older one, arrived late
        self._latest[status.node] = Heard(status, now)
        return (known is None or known.status.epoch != status.epoch
                or _states(known.status) != _states(status))


    def get(self, node: str) -> Heard | None:
        return self._latest.get(node)

    def alive(self, node: str, now: float) -> bool:
        heard = self._latest.get(node)
        return heard is not None and heard.alive(now)

    def all(self) -> list[Heard]:
        return [self._latest[name] for name in sorted(self._latest)]


def _states(status: NodeStatus) -> set[tuple[str, str]]:
    return {(r.replica_id, r.state) for r in status.replicas}
