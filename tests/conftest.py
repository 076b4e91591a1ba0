"""Settings for the whole test suite.

PyTorch runs on one thread, here and in every process the tests start (gunicorn, a real backend, scripts):
on a busy two-core machine its intra-op threads spin-wait on each other, and a training step measured 16x
slower with two threads than with one. ``OMP_NUM_THREADS`` is set before any test module imports torch
(torch reads it once, at import) and is inherited by subprocesses; the fixture puts the thread count back
to one after a test that changed it (e.g. a command's ``--threads``).
"""

from __future__ import annotations

import os
import sys

import pytest

TORCH_THREADS = 1

os.environ["OMP_NUM_THREADS"] = str(TORCH_THREADS)


@pytest.fixture(autouse=True)
def torch_on_one_thread() -> None:
    """Only where torch is already imported: importing it here would cost seconds in torch-free tests."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
