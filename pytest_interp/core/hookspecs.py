"""Hook specifications pytest-interp adds to pytest (and to its own plugin manager outside pytest)."""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("pytest")


@hookspec(firstresult=True)
def pytest_interp_adapter(model: Any) -> Any:
    """Return a :class:`pytest_interp.Adapter` for ``model``, or ``None`` to let others (and the built-ins) try.

    Implement it in a ``conftest.py`` to support an architecture pytest-interp does not know::

        import pytest_interp as pi

        def pytest_interp_adapter(model):
            if model.config.model_type == "mymodel":
                return pi.Adapter(name="mymodel", layers="backbone.blocks", attn_out="attn.proj", mlp="ffn")
    """
