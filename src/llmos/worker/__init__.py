"""One model replica: an engine that consumes its deployment's request queue."""

from llmos.worker.worker import Worker

__all__ = ["Worker"]
