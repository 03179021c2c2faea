"""meterline: an LLM gateway that meters every token."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("meterline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
