"""The ``llmos`` command line."""
