"""The CPU linears at decode and verify sizes: all linears of SmolLM2-135M in model order.

For each activation height M (1 = a decode step, 2..32 = tree nodes verified in one forward)
this times one pass over the model's 121 linears (30 x fused QKV, O, fused gate-up, down, then
the 49152 x 576 LM head), each fed its own [M, K] bfloat16 activations, for:

- ``onednn bf16``: ``torch.nn.functional.linear`` on the [N, K] bf16 weight (oneDNN);
- ``onednn float32``: the same on float32 weights and activations (the float32 model's linears;
  the default CPU dtype where bf16 is not native);
- ``rows bf16`` / ``rows int8``: the previous kernel (weight rows dotted with activation rows,
  horizontal reductions), built from its source at commit ``OLD_COMMIT`` under another operator
  namespace, for comparison (skipped when git or the compiler is not there, or the CPU lacks
  AVX512_BF16);
- ``packed bf16`` / ``packed int8``: ``specgrove.kernels.cpu_linear`` (pairs layout, VDPBF16PS
  register tiles, or float32 FMA register tiles on AVX2 CPUs: ``cpu_linear.isa()``);
- ``amx bf16`` / ``amx int8`` (on CPUs with AMX): the same packed weights on AMX tiles at every
  height (the layers use them from ``AMX_MIN_ROWS`` rows on);
- ``onednn amx bf16`` (on CPUs with AMX): oneDNN's linear on weights reordered once into its
  blocked format (``torch.ops.mkldnn``, what Inductor uses for frozen CPU linears), for
  comparison.

Variants and heights are interleaved within every repeat (the order rotates), and the table
reports medians over repeats, so a neighbour's load on the machine hits all variants alike.

``--verify`` measures the end-to-end effect instead: the target engine's verify time per step
by tree size (1..32 nodes: the pending token and its children, 300-token prefix, as
``cpu_decode.step_ms``) at bfloat16 and int8, with the packed kernels and with the previous kernel
swapped in, interleaved; with ``--dense`` also without the kernels (``F.linear`` in bf16, and the
float32 model); wall and process-CPU time (on a loaded machine, ``--threads 1`` CPU time is the
cleaner comparison).

    python benchmarks/cpu_linear.py --repeats 15 --out benchmarks/results/cpu_linear_cpu.json
    python benchmarks/cpu_linear.py --verify --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: benchmarks.common
from benchmarks.common import REPO, meta
from specgrove.kernels import cpu_linear

MODEL = "smollm2-135m-instruct"
FLOAT32 = "onednn float32"  # the variant fed float32 activations
HEIGHTS = (1, 2, 4, 8, 9, 16, 32)  # default --heights; 300 adds a prefill-sized one
OLD_COMMIT = "ce7a592"  # the last commit with the row-major kernel
OLD_SOURCE = "specgrove/kernels/csrc/linear_cpu.cpp"


def model_weights() -> list[torch.Tensor]:
    """The [N, K] bf16 weights of every linear of the embedded model, in model order."""
    from specgrove.kernels.backend import select_backend
    from specgrove.modeling.cpu_kernels import _LINEARS
    from specgrove.modeling.loader import build_model, resolve_model

    cpu = torch.device("cpu")
    model = build_model(resolve_model(MODEL), torch.bfloat16, cpu, select_backend("torch", cpu),
                        transposed=False)
    return [m.weight.detach() for m in model.modules() if isinstance(m, _LINEARS)]


def build_old_kernel() -> bool:
    """Compile the previous kernel as ``torch.ops.specgrove_cpu_linear_rows``; False if impossible."""
    from torch.utils.cpp_extension import load

    from specgrove.kernels.cpu_build import CFLAGS, _build_dir

    try:
        source = subprocess.run(["git", "show", f"{OLD_COMMIT}:{OLD_SOURCE}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
        path = Path(tempfile.mkdtemp()) / "linear_rows_cpu.cpp"
        path.write_text(source.replace("specgrove_cpu_linear", "specgrove_cpu_linear_rows"))
        load(name="specgrove_linear_rows_cpu", sources=[str(path)], extra_cflags=CFLAGS,
             extra_ldflags=["-fopenmp"], build_directory=str(_build_dir()), is_python_module=False)
    except Exception as exc:  # noqa: BLE001 -- the comparison is optional
        print(f"previous kernel not built ({exc}); skipping it", file=sys.stderr)
        return False
    if not torch.ops.specgrove_cpu_linear_rows.available():  # it exists for AVX512_BF16 only
        print("previous kernel not built for this CPU (AVX512_BF16 only); skipping it", file=sys.stderr)
        return False
    return True


class OneDnnReordered:
    """oneDNN's linear on a weight reordered once into its blocked format (AMX where present)."""

    def __init__(self, w: torch.Tensor) -> None:
        self.weight = torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16).contiguous(), 16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")


class RowsBf16:
    """The previous bf16 kernel over the [N, K] weight (K % 32 == 0, N % 4 == 0)."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w = w.to(torch.bfloat16).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        return torch.ops.specgrove_cpu_linear_rows.linear_bf16(flat, self.w).reshape(*x.shape[:-1], -1)


class RowsInt8:
    """The previous int8 kernel over row-major q [N, K] and scales [N]."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        self.q, self.scale = q.contiguous(), scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        out = torch.ops.specgrove_cpu_linear_rows.linear_int8(flat, self.q, self.scale)
        return out.reshape(*x.shape[:-1], -1)


def variants(weights: list[torch.Tensor], old: bool) -> dict[str, list]:
    """name -> one callable per linear, in model order."""
    out = {"onednn bf16": [lambda x, w=w: F.linear(x, w) for w in weights],
           FLOAT32: [lambda x, w=w.float(): F.linear(x, w) for w in weights],
           "packed bf16": [cpu_linear.Bf16Linear(w, amx=False) for w in weights]}
    int8 = [cpu_linear.Int8Linear(w, amx=False) for w in weights]
    out["packed int8"] = int8
    if cpu_linear.amx_available():
        ops = torch.ops.specgrove_cpu_linear
        out["amx bf16"] = [lambda x, k=k: ops.linear_bf16_amx(x, k.packed, k.out_features)
                           for k in out["packed bf16"]]
        out["amx int8"] = [lambda x, k=k: ops.linear_int8_amx(x, k.packed, k.scale) for k in int8]
        out["onednn amx bf16"] = [OneDnnReordered(w) for w in weights]
    if old:
        out["rows bf16"] = [RowsBf16(w) for w in weights]
        out["rows int8"] = [RowsInt8(k.q, k.scale) for k in int8]
    return out


def linears_table(args) -> dict:
    heights = args.heights
    weights = model_weights()
    table = variants(weights, args.rows and build_old_kernel())
    names = list(table)
    inputs = {m: [torch.randn(m, w.shape[1]).to(torch.bfloat16) for w in weights] for m in heights}
    inputs32 = {m: [x.float() for x in xs] for m, xs in inputs.items()}
    # name -> M -> [wall ms], [process CPU ms] (all threads: on a loaded machine, CPU time of
    # one thread is the cleaner kernel-efficiency measure, wall time is what a step pays)
    wall = {name: {m: [] for m in heights} for name in names}
    cpu = {name: {m: [] for m in heights} for name in names}
    loads = []
    for rep in range(args.repeats + 1):  # the first round warms caches and thread pools
        for m in heights:
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                start, start_cpu = time.perf_counter(), time.process_time()
                for layer, x in zip(table[name], (inputs32 if name == FLOAT32 else inputs)[m]):
                    layer(x)
                if rep:
                    wall[name][m].append(1e3 * (time.perf_counter() - start))
                    cpu[name][m].append(1e3 * (time.process_time() - start_cpu))
        loads.append(os.getloadavg()[0])
        print(f"repeat {rep}: load {loads[-1]:.2f}", flush=True)
    result = {"linears": len(weights), "threads": torch.get_num_threads(), "isa": cpu_linear.isa(),
              "weight_mb": {"bf16": sum(w.numel() for w in weights) * 2 / 1e6,
                            "int8": sum(w.numel() for w in weights) / 1e6},
              "load_1min_per_repeat": loads}
    for label, samples, reduce in (("wall_ms_median", wall, statistics.median), ("wall_ms_min", wall, min),
                                   ("cpu_ms_median", cpu, statistics.median)):
        result[label] = {n: {m: reduce(v) for m, v in by_m.items()} for n, by_m in samples.items()}
        print(f"{label + ', all linears':<28}" + "".join(f"{'M=' + str(m):>8}" for m in heights))
        for n in names:
            print(f"  {n:<26}" + "".join(f"{result[label][n][m]:8.2f}" for m in heights))
    return result


def verify_times(engine, nodes: int, context: int = 300, steps: int = 3) -> tuple[list, list]:
    """Wall and process-CPU ms of ``steps`` verifies of a one-level tree of ``nodes`` nodes (the
    pending token and nodes - 1 children) after a ``context``-token prefill, as in
    ``cpu_decode.step_ms``; the first verify warms up and is not counted."""
    from specgrove.tree import TokenTree
    from specgrove.types import PrefillRequest, VerifyItem

    (r,) = engine.prefill([PrefillRequest(1, tuple(range(100, 100 + context)))])
    pending, wall, cpu = r.first_token, [], []
    for i in range(steps + 1):
        tree = TokenTree((pending,) + tuple(range(500, 499 + nodes)), (-1,) + (0,) * (nodes - 1))
        start, start_cpu = time.perf_counter(), time.process_time()
        (res,) = engine.verify([VerifyItem(1, tree)])
        if i:
            wall.append(1e3 * (time.perf_counter() - start))
            cpu.append(1e3 * (time.process_time() - start_cpu))
        pending = res.bonus_token
    engine.release(1)
    return wall, cpu


def verify_table(args) -> dict:
    """Verify ms per step by tree size, packed vs previous kernel (and, ``--dense``, F.linear), bf16
    and int8, interleaved."""
    from benchmarks.cpu_decode import ours

    engines = {"packed bf16": ours("bfloat16")[0].engine, "packed int8": ours("bfloat16", "int8")[0].engine}
    if cpu_linear.amx_available():  # the engines above take AMX from AMX_MIN_ROWS rows on
        engines = {f"{name} + amx": engine for name, engine in engines.items()}
        for kind in ("bf16", "int8"):
            engine = ours("bfloat16", "none" if kind == "bf16" else "int8")[0].engine
            for module in engine.runner.model.modules():
                if getattr(module, "kernel", None) is not None:
                    module.kernel.amx = False  # VDPBF16PS at every height
            engines[f"packed {kind}"] = engine
    if args.rows and build_old_kernel():
        for kind in ("bf16", "int8"):
            engine = ours("bfloat16", "none" if kind == "bf16" else "int8")[0].engine
            for module in engine.runner.model.modules():
                kernel = getattr(module, "kernel", None)
                if kernel is not None:
                    module.kernel = (RowsBf16(kernel.dequantized().to(torch.bfloat16)) if kind == "bf16"
                                     else RowsInt8(kernel.q, kernel.scale))
            engines[f"rows {kind}"] = engine
    if args.dense:  # without the kernels: F.linear on the [N, K] bf16 weights; the float32 model
        engine = ours("bfloat16")[0].engine
        for module in engine.runner.model.modules():
            kernel = getattr(module, "kernel", None)
            if kernel is not None:
                module.weight = torch.nn.Parameter(kernel.dequantized().to(torch.bfloat16), requires_grad=False)
                module.kernel = None
        engines["F.linear bf16"] = engine
        engines["F.linear float32"] = ours("float32")[0].engine
    nodes = (1, 2, 4, 8, 16, 32)
    wall = {name: {n: [] for n in nodes} for name in engines}
    cpu = {name: {n: [] for n in nodes} for name in engines}
    loads = []
    for rep in range(args.repeats):
        for name, engine in engines.items():
            for n in nodes:
                w, c = verify_times(engine, n)
                wall[name][n] += w
                cpu[name][n] += c
        loads.append(os.getloadavg()[0])
        print(f"repeat {rep}: load {loads[-1]:.2f}", flush=True)
    result = {"threads": torch.get_num_threads(), "prefix": 300, "load_1min_per_repeat": loads}
    for label, samples in (("wall_ms_median", wall), ("cpu_ms_median", cpu)):
        ms = {name: {n: statistics.median(v) for n, v in by_n.items()} for name, by_n in samples.items()}
        result[label] = ms
        result[label.replace("ms_median", "16_over_1")] = {name: v[16] / v[1] for name, v in ms.items()}
        print(f"{label:<20}" + "".join(f"{n:>8}" for n in nodes) + "   16/1")
        for name in engines:
            print(f"  {name:<18}" + "".join(f"{ms[name][n]:8.1f}" for n in nodes)
                  + f"   {ms[name][16] / ms[name][1]:.2f}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--verify", action="store_true", help="verify ms by tree size instead")
    ap.add_argument("--no-rows", dest="rows", action="store_false",
                    help="leave out the previous kernel")
    ap.add_argument("--dense", action="store_true",
                    help="--verify: also without the kernels (F.linear in bf16, and float32)")
    ap.add_argument("--heights", type=lambda v: tuple(int(m) for m in v.split(",")), default=HEIGHTS,
                    help="comma-separated activation heights M (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON file (merged with what it already holds)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    key = ("verify" if args.verify else "linears") + (f"_{args.threads}_threads" if args.threads else "")
    result = {key: verify_table(args) if args.verify else linears_table(args)}
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.exists() else {}
        info = meta(model=MODEL, repeats=args.repeats, heights=list(args.heights), loadavg_at_end=os.getloadavg())
        path.write_text(json.dumps({**old, **result, f"meta_{key}": info}, indent=2))


if __name__ == "__main__":
    main()
