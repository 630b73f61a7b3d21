"""The package version (one place: the run cache keys on it, reports print it)."""

__version__ = "0.1.0"
