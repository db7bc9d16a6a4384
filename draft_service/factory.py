"""Build drafters from ``KIND[:SPEC]`` strings: ``ngram``, ``ngram:4`` (max n-gram), ``model:PATH``."""
from __future__ import annotations

import torch

from draft_service.drafters.model import ModelDrafter
from draft_service.drafters.ngram import NgramDrafter
from specgrove.runner import KVCacheConfig, load_runner
from specgrove.types import InvalidRequest

DRAFTER_KINDS = ("ngram", "model")


class VocabularyMismatch(InvalidRequest):
    """A draft model whose vocabulary differs from the target's."""


def build_drafter(
    spec: str, target_vocab_size: int, dtype: torch.dtype, device: torch.device,
    kv: KVCacheConfig, backend: str = "auto",
):
    kind, _, arg = spec.partition(":")
    if kind == "ngram":
        return NgramDrafter(max_ngram=int(arg)) if arg else NgramDrafter()
    if kind == "model":
        if not arg:
            raise ValueError("a model drafter needs a path or name: model:PATH")
        runner = load_runner(arg, dtype, device, kv, backend)
        if runner.config.vocab_size != target_vocab_size:
            raise VocabularyMismatch(
                "spec", f"draft model {arg!r} has a vocabulary of {runner.config.vocab_size} tokens but the "
                f"target has {target_vocab_size}; a drafter must share the target's tokenizer"
            )
        return ModelDrafter(runner)
    raise ValueError(f"unknown drafter kind {kind!r}; choose one of {', '.join(DRAFTER_KINDS)}")
