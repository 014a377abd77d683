"""One per machine: starts and stops the workers of this node (``llmos.agent.local``).

Re-exports nothing: importing a package must not load its heavy modules.
"""
