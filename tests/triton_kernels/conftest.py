"""Triton kernels against their plain-torch references (DESIGN "Testing", Conventions 3).

Without CUDA the kernels run under Triton's interpreter (numpy on the CPU), so the CPU cases use
small shapes; the ``gpu`` cases run the compiled kernels at serving shapes. The whole directory
is skipped when triton is not installed.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads this when it is first imported (its own @jit library) and when each kernel is
    # decorated: it has to be set before anything imports triton (tests/conftest.py sets it too,
    # as other test modules import the kernels through specgrove.kernels.backend first).
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:
    collect_ignore_glob = ["test_*.py"]
    INTERPRETER_MISSED = False
else:
    # Without CUDA the kernels can only run interpreted; that needs Triton's library interpreted too.
    INTERPRETER_MISSED = not torch.cuda.is_available() and not isinstance(tl.max, InterpretedFunction)


@pytest.fixture(autouse=True)
def _triton_runnable():
    if INTERPRETER_MISSED:
        pytest.fail(
            "triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run on "
            "this CPU-only machine: set the variable in tests/conftest.py before any import of "
            "triton or kernels",
            pytrace=False,
        )
