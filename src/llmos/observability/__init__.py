"""Metrics, structured logs and request ids shared by every module."""
