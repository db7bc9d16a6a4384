"""Build drafters from ``KIND[:SPEC]`` strings: ``ngram``, ``ngram:4`` (max n-gram),
``suffix``, ``suffix:budget=0,min_prob=0.2`` (SuffixDecoding; ``drafters/suffix/options.py``),
``model:PATH`` (a causal LM with the target's vocabulary), ``eagle:PATH|NAME`` (a trained EAGLE
head: a directory, or the name of a head shipped in ``draft_service/heads/``)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

from specgrove.config import ModelRunConfig
from specgrove.errors import InvalidRequest

DRAFTER_KINDS = ("ngram", "suffix", "model", "eagle")
HEADS_DIR = Path(__file__).resolve().parent / "heads"


class VocabularyMismatch(InvalidRequest):
    """A draft model whose vocabulary differs from the target's."""


@dataclass(frozen=True)
class DraftTarget:
    """The target every drafter must fit: its vocabulary and, for EAGLE heads, its shape and
    token embedding, read from its checkpoint when first needed."""

    model: str  # a model name or path

    @functools.cached_property
    def config(self):
        from specgrove.modeling.loader import load_config, resolve_model

        return load_config(resolve_model(self.model))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def embedding(self):  # [V, d] float32
        from specgrove.modeling.loader import load_embedding, resolve_model

        return load_embedding(resolve_model(self.model))


def shipped_head(name: str) -> Path | None:
    """The directory of the head shipped for a named model (``smollm2-135m-instruct``), if any."""
    if not name or Path(name).name != name:
        return None  # a path, not a name
    directory = HEADS_DIR / name
    return directory if (directory / "config.json").is_file() else None


def head_dir(name_or_path: str) -> Path:
    """A head directory: the path given, or a head shipped with specgrove by that name."""
    shipped = shipped_head(name_or_path)
    if shipped is not None:
        return shipped
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path
    names = sorted(p.name for p in HEADS_DIR.glob("*") if (p / "config.json").is_file())
    raise InvalidRequest("spec", f"no EAGLE head at {name_or_path!r}: not a directory with config.json "
                                 f"nor a shipped head ({', '.join(names) or 'none shipped'})")


def build_drafter(spec: str, target: DraftTarget, run: ModelRunConfig):
    """A drafter for ``spec``; ``run`` gives dtype, device, kernels and KV size of model drafters."""
    kind, _, arg = spec.partition(":")
    if kind == "ngram":
        from draft_service.drafters.ngram import NgramDrafter

        return NgramDrafter(max_ngram=int(arg)) if arg else NgramDrafter()
    if kind == "suffix":
        from draft_service.drafters.suffix import SuffixDrafter, SuffixOptions

        return SuffixDrafter(SuffixOptions.parse(arg))
    if kind == "model":
        return _model_drafter(arg, target, run)
    if kind == "eagle":
        return _eagle_drafter(arg, target, run)
    raise ValueError(f"unknown drafter kind {kind!r}; choose one of {', '.join(DRAFTER_KINDS)}")


def _model_drafter(arg: str, target: DraftTarget, run: ModelRunConfig):
    from draft_service.drafters.model import ModelDrafter
    from specgrove.runner import load_runner

    if not arg:
        raise ValueError("a model drafter needs a path or name: model:PATH")
    runner = load_runner(replace(run, model=arg))
    if runner.config.vocab_size != target.vocab_size:
        raise VocabularyMismatch(
            "spec", f"draft model {arg!r} has a vocabulary of {runner.config.vocab_size} tokens but the "
            f"target has {target.vocab_size}; a drafter must share the target's tokenizer")
    return ModelDrafter(runner)


def _eagle_drafter(arg: str, target: DraftTarget, run: ModelRunConfig):
    from safetensors.torch import load_file

    from draft_service.drafters.eagle.config import WEIGHTS_FILE, EagleConfig

    if not arg:
        raise ValueError("an EAGLE drafter needs a head: eagle:PATH or eagle:NAME")
    directory = head_dir(arg)
    cfg = EagleConfig.load(directory)
    cfg.check_target(target.config)
    return eagle_drafter(cfg, load_file(str(directory / WEIGHTS_FILE)), target.embedding(), run)


def eagle_drafter(cfg, state: dict, embed, run: ModelRunConfig):
    """An EAGLE drafter over a head's weights (``state``) and the target's embedding [V, d]."""
    import torch

    from draft_service.drafters.eagle.drafter import EagleDrafter
    from draft_service.drafters.eagle.serving import serving_from_state
    from specgrove.kernels.backend import select_backend
    from specgrove.modeling.parallel import LayerContext
    from specgrove.runner import ModelExecutor, ModelRunner

    from specgrove.modeling.cpu_kernels import use_cpu_kernels

    device = run.torch_device
    backend = select_backend(run.kernel_backend, device)
    cpu_kernels = backend.name == "cpu" and run.torch_dtype == torch.bfloat16
    transposed = (device.type == "cpu" and not cpu_kernels) if run.transposed is None else run.transposed
    ctx = LayerContext(dtype=run.torch_dtype, transposed=transposed)
    model = serving_from_state(cfg, state, embed.to(device), ctx, backend)
    if cpu_kernels and not transposed:
        use_cpu_kernels(model)  # the head stays bfloat16 whatever the target's quantization
    return EagleDrafter(ModelRunner(ModelExecutor(model, run.kv, device), run.kv))
