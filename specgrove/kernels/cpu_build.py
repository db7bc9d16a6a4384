"""Building the C++ CPU kernels (``specgrove/kernels/csrc/*.cpp``) once, at first use.

``torch.utils.cpp_extension.load`` compiles a source into a shared library that registers torch
operators (``TORCH_LIBRARY``), and caches it. Needs a C++ compiler and ninja (the ``ninja`` pip
package provides it). The build targets this CPU (``-march=native``), so the cache directory is
keyed by the CPU's feature flags: a cache shared between machines never loads a library built
for another CPU. A build that fails is reported once and the caller falls back to the torch
references, so no machine is left without a working backend.

``-fopenmp``: ``at::parallel_for`` is an inline ``#pragma omp parallel``, serial without it; the
library then uses the libgomp that torch already loaded (one OpenMP runtime).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger("specgrove.kernels")
CSRC = Path(__file__).resolve().parent / "csrc"
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX): then bfloat16 is the
    default CPU dtype. ``get_cpu_capability()`` says "AVX512" with or without the extension."""
    try:
        import torch

        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return True
    except (AttributeError, ImportError):  # private helpers renamed or gone
        pass
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _build_dir() -> Path:
    import torch

    key = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    base = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    path = base / f"specgrove-{torch.__version__}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=None)
def load_library(name: str) -> bool:
    """Compile (first time on this machine) and load ``csrc/<name>.cpp``; False if it fails."""
    from torch.utils.cpp_extension import load

    try:
        load(name=f"specgrove_{name}", sources=[str(CSRC / f"{name}.cpp")], extra_cflags=CFLAGS,
             extra_ldflags=["-fopenmp"], build_directory=str(_build_dir()), is_python_module=False)
    except Exception as exc:  # noqa: BLE001 -- no compiler, no ninja, an old CPU: use the references
        log.warning("CPU kernels %s unavailable (%s); using the torch references", name, exc)
        return False
    return True
