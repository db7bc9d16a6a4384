"""Build drafters from ``KIND[:SPEC]`` strings: ``ngram``, ``ngram:4`` (max n-gram), ``model:PATH``."""
from __future__ import annotations

from dataclasses import replace

from draft_service.drafters.model import ModelDrafter
from draft_service.drafters.ngram import NgramDrafter
from specgrove.config import ModelRunConfig
from specgrove.errors import InvalidRequest
from specgrove.runner import load_runner

DRAFTER_KINDS = ("ngram", "model")


class VocabularyMismatch(InvalidRequest):
    """A draft model whose vocabulary differs from the target's."""


def build_drafter(spec: str, target_vocab_size: int, run: ModelRunConfig):
    """A drafter for ``spec``; ``run`` gives dtype, device, kernels and KV size of model drafters."""
    kind, _, arg = spec.partition(":")
    if kind == "ngram":
        return NgramDrafter(max_ngram=int(arg)) if arg else NgramDrafter()
    if kind == "model":
        if not arg:
            raise ValueError("a model drafter needs a path or name: model:PATH")
        runner = load_runner(replace(run, model=arg))
        if runner.config.vocab_size != target_vocab_size:
            raise VocabularyMismatch(
                "spec", f"draft model {arg!r} has a vocabulary of {runner.config.vocab_size} tokens but the "
                f"target has {target_vocab_size}; a drafter must share the target's tokenizer"
            )
        return ModelDrafter(runner)
    raise ValueError(f"unknown drafter kind {kind!r}; choose one of {', '.join(DRAFTER_KINDS)}")
