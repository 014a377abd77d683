"""One per machine: starts and stops the workers of this node."""

from llmos.agent.local import LocalAgent

__all__ = ["LocalAgent"]
