"""What every rank of a tensor-parallel target loads, and the worker command line that carries it.

Rank 0 builds a :class:`ShardSpec` and hands it to the workers it spawns as flags of
``python -m target_service.tp``; under torchrun every rank parses the same flags.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

from specgrove.config import DTYPES, ModelRunConfig
from specgrove.kv import KVCacheConfig

LAYOUTS = {"auto": None, "checkpoint": False, "transposed": True}


@dataclass(frozen=True)
class ShardSpec:
    run: ModelRunConfig  # model = a resolved Hugging Face directory; every rank its own KV heads
    timeout_s: float = 120.0  # start-up and per-collective limit

    def argv(self) -> list[str]:
        run = self.run
        layout = next(k for k, v in LAYOUTS.items() if v is run.transposed)
        return [
            "--model", run.model, "--dtype", run.dtype_name, "--device", run.torch_device.type,
            "--block-size", str(run.kv.block_size), "--num-blocks", str(run.kv.num_blocks),
            "--backend", run.kernel_backend, "--layout", layout, "--timeout", str(self.timeout_s),
            "--quantization", run.quantization,
        ]

    @staticmethod
    def parse(argv: Sequence[str] | None = None) -> "ShardSpec":
        args = _parser().parse_args(argv)
        run = ModelRunConfig(args.model, args.dtype, args.device, args.backend,
                             KVCacheConfig(args.block_size, args.num_blocks),
                             transposed=LAYOUTS[args.layout], quantization=args.quantization)
        return ShardSpec(run, args.timeout)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m target_service.tp",
        description="A worker rank (RANK >= 1) of a tensor-parallel specgrove target. Reads "
        "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT like torchrun sets them.",
    )
    p.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=1024)
    p.add_argument("--backend", default="auto", help="kernel backend: auto, torch, triton")
    p.add_argument("--layout", default="auto", choices=tuple(LAYOUTS))
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per collective")
    p.add_argument("--quantization", default="none", choices=("none", "int8"))
    return p
