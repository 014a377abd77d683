"""The HTTP edge: OpenAI-compatible API, health, metrics (``llmos.gateway.app``).

Talks to workers only via the bus. Re-exports nothing: importing a package must not load
its heavy modules.
"""
