"""One model replica: an engine that consumes its deployment's request queue
(``llmos.worker.worker``).

Re-exports nothing: importing a package must not load its heavy modules.
"""
