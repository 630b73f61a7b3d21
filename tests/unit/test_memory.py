"""Freed buffers go back to the system: the first run fixes glibc's mmap threshold, unless the user set it."""

import os
import platform
import subprocess
import sys

import pytest

CODE = """
import torch, pytest_interp as pi
from pytest_interp.engine import memory
from tests.helpers import tiny_model
subject = pi.load(tiny_model("llama"))
assert "done" not in memory._state  # loading runs nothing
pi.ablate(subject, pi.head(0, 0), inputs=torch.randint(1, 40, (4, 8)), metric=pi.metrics.loss(), how=pi.Zero())
print(memory._state["done"])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
@pytest.mark.parametrize("env, expected", [({}, "True"), ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "False")])
def test_the_first_run_fixes_the_mmap_threshold_unless_the_environment_does(env, expected):
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env={**base, **env},
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == expected
