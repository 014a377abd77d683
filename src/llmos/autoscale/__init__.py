"""Autoscaling and capacity planning from queueing theory (pure: data in, data out)."""
