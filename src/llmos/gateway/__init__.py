"""The HTTP edge: OpenAI-compatible API, health, metrics. Talks to workers only via the bus."""

from llmos.gateway.app import create_app

__all__ = ["create_app"]
