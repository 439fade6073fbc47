"""station: controller of an inline inspection cell for woven glass-fibre sheets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("station")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
