"""LLMOS: an operating system for large language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llmos")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
