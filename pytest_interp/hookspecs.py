"""Hook specifications pytest-interp adds to pytest: see :mod:`pytest_interp.core.hookspecs`."""

from .core.hookspecs import hookspec, pytest_interp_adapter

__all__ = ["hookspec", "pytest_interp_adapter"]
