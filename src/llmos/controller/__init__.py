"""Desired state vs actual state: the reconcile loop."""

from llmos.controller.reconcile import Controller

__all__ = ["Controller"]
