"""Which worker processes are alive: the latest heartbeat of each, until it goes stale.

Pure bookkeeping (heartbeats in, the live set out, the time passed in), so it is
tested without a bus. A heartbeat is stale two intervals after it was sent; a
worker that restarts sends a new epoch, which replaces the old one at once.
"""

from __future__ import annotations

from llmos.bus.messages import Heartbeat


class WorkerDirectory:
    def __init__(self) -> None:
        self._latest: dict[str, Heartbeat] = {}

    def observe(self, heartbeat: Heartbeat) -> None:
        known = self._latest.get(heartbeat.worker_id)
        if heartbeat.leaving:  # its goodbye: gone at once, not two intervals later
            if known is not None and known.epoch == heartbeat.epoch:
                del self._latest[heartbeat.worker_id]
            return
        if (known is None or known.epoch != heartbeat.epoch
                or heartbeat.sent_at >= known.sent_at):
            self._latest[heartbeat.worker_id] = heartbeat

    def live(self, now: float) -> list[Heartbeat]:
        """Workers heard from within two heartbeat intervals, by deployment and id."""
        for worker_id, heartbeat in list(self._latest.items()):
            if heartbeat.expires_at < now:
                del self._latest[worker_id]
        return sorted(self._latest.values(), key=lambda h: (h.deployment, h.worker_id))

    def find(self, prefix: str, now: float) -> list[Heartbeat]:
        """The live workers whose id is ``prefix`` or starts with it (an exact id first)."""
        live = self.live(now)
        exact = [h for h in live if h.worker_id == prefix]
        return exact or [h for h in live if h.worker_id.startswith(prefix)]

    def get(self, worker_id: str, now: float) -> Heartbeat | None:
        heartbeat = self._latest.get(worker_id)
        if heartbeat is None or heartbeat.expires_at < now:
            return None
        return heartbeat

    def serving(self, deployment: str, now: float) -> bool:
        """Whether a live worker of ``deployment`` takes requests (is not draining)."""
        return any(h.deployment == deployment and not h.draining and h.expires_at >= now
                   for h in self._latest.values())

    def working(self, deployment: str, now: float) -> bool:
        """Whether a live worker of ``deployment`` still has requests on its engine."""
        return any(h.deployment == deployment and h.busy > 0 and h.expires_at >= now
                   for h in self._latest.values())
