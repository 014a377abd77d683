"""Desired state vs actual state: the reconcile loop (``llmos.controller.reconcile``).

Re-exports nothing: importing a package must not load its heavy modules.
"""
