"""What every rank of a tensor-parallel target loads, and the worker command line that carries it.

Rank 0 builds a :class:`ShardSpec` and hands it to the workers it spawns as flags of
``python -m target_service.tp``; under torchrun every rank parses the same flags.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from specgrove.modeling.parallel import TPGroup
from specgrove.runner import KVCacheConfig

LAYOUTS = {"auto": None, "checkpoint": False, "transposed": True}


@dataclass(frozen=True)
class ShardSpec:
    path: str  # a resolved Hugging Face directory
    dtype: str  # torch dtype name, e.g. "float32"
    device: str  # "cpu" or "cuda" (rank r then uses cuda:LOCAL_RANK)
    kv: KVCacheConfig  # block geometry; every rank holds the KV heads of its own shard
    backend: str = "auto"  # kernel backend name
    transposed: bool | None = None  # weight layout; None = the loader's default for the device
    timeout_s: float = 120.0  # start-up and per-collective limit

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def build_model(self, tp: TPGroup, device: torch.device):
        """This rank's shard of the model: each parallel layer loads its own slice."""
        from kernels.backend import select_backend
        from specgrove.modeling.loader import build_model

        backend = select_backend(self.backend, device)
        return build_model(Path(self.path), self.torch_dtype, device, backend, tp=tp,
                           transposed=self.transposed)

    def argv(self) -> list[str]:
        layout = next(k for k, v in LAYOUTS.items() if v is self.transposed)
        return [
            "--model", self.path, "--dtype", self.dtype, "--device", self.device,
            "--block-size", str(self.kv.block_size), "--num-blocks", str(self.kv.num_blocks),
            "--backend", self.backend, "--layout", layout, "--timeout", str(self.timeout_s),
        ]

    @staticmethod
    def parse(argv: Sequence[str] | None = None) -> "ShardSpec":
        args = _parser().parse_args(argv)
        if not isinstance(getattr(torch, args.dtype, None), torch.dtype):
            raise SystemExit(f"unknown dtype {args.dtype!r}")
        return ShardSpec(
            path=args.model, dtype=args.dtype, device=args.device,
            kv=KVCacheConfig(args.block_size, args.num_blocks), backend=args.backend,
            transposed=LAYOUTS[args.layout], timeout_s=args.timeout,
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m target_service.tp",
        description="A worker rank (RANK >= 1) of a tensor-parallel specgrove target. Reads "
        "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT like torchrun sets them.",
    )
    p.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=1024)
    p.add_argument("--backend", default="auto", help="kernel backend: auto, torch, triton")
    p.add_argument("--layout", default="auto", choices=tuple(LAYOUTS))
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per collective")
    return p
