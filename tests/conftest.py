from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET once, at its first import (specgrove.kernels.backend may import it): without
# a GPU the Triton kernels run under its interpreter on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.tiny_models import save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Tiny checkpoints: a target per architecture plus a different draft for llama."""
    root = tmp_path_factory.mktemp("models")
    return {
        "llama": save_tiny_model(root / "llama", "llama", seed=0),
        "llama3": save_tiny_model(root / "llama3", "llama3", seed=1),
        "qwen2": save_tiny_model(root / "qwen2", "qwen2", seed=2),
        "mistral": save_tiny_model(root / "mistral", "mistral", seed=3),
        # Draft: same vocabulary, one layer, other weights.
        "draft": save_tiny_model(root / "draft", "llama", seed=4, seed_layers=1),
    }


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(1234)
