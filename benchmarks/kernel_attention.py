"""Speed of the Triton kernels against the torch reference and a dense SDPA baseline.

On a CUDA device, at serving shapes (32 sequences, 32 query heads over 8 KV heads, head dim 128,
pages of 16, fp16 by default) and a sweep of prefix lengths, it times
``specgrove.kernels.tree_attention.tree_attention`` in two modes, plain decoding (one query per sequence)
and tree verification (64-node trees), against

* ``tree_attention_ref`` (the plain-torch path the ``torch`` backend runs), and
* ``F.scaled_dot_product_attention`` over K/V already gathered into a contiguous
  ``[B, Hkv, kv_len, D]`` tensor (the gather is not timed): what a dense cache would cost.

Times are medians of ``triton.testing.do_bench``. Achieved bandwidth is the bytes an attention
pass must move (K/V of every visible key, Q, the output) over its time, set beside the device's
copy bandwidth (a large device-to-device copy, read + write). ``write_kv`` and ``commit_kv`` are
timed at the same shapes. Results go to a JSON file with the device, versions and git commit.

    python benchmarks/kernel_attention.py --out benchmarks/results/kernels-h100.json

Without CUDA it refuses, unless ``--smoke``: one tiny case under Triton's interpreter, checking
that the kernel, the reference and the SDPA baseline agree (no timings).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="JSON results file (default: print only)")
    p.add_argument("--prefixes", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--page", type=int, default=16)
    p.add_argument("--tree", type=int, default=64, help="nodes per verification tree")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--smoke", action="store_true", help="no CUDA: tiny interpreter check only")
    return p.parse_args(argv)


def build_case(args, prefix: int, tree_nodes: int, device, gen) -> dict:
    """Inputs of one attention call: every sequence has ``prefix`` committed keys, then a window
    of ``tree_nodes`` keys queried as a random tree (or, for 0, one causal decoding query)."""
    b, hq, hkv, d, page = args.batch, args.q_heads, args.kv_heads, args.head_dim, args.page
    dtype = DTYPES[args.dtype]
    window = max(tree_nodes, 1)
    kv_len = prefix + window
    pages = -(-kv_len // page)
    tables = torch.randperm(b * pages, generator=gen).view(b, pages).int()  # shuffled blocks
    cache = lambda: torch.randn(b * pages, page, hkv, d, generator=gen).to(dtype)  # noqa: E731
    case = dict(
        q=torch.randn(b * window, hq, d, generator=gen).to(dtype), k_cache=cache(),
        v_cache=cache(), block_tables=tables, kv_lens=torch.full((b,), kv_len, dtype=torch.int32),
        cu_seqlens_q=torch.arange(0, b * window + 1, window, dtype=torch.int32),
        tree_mask=None, tree_lens=None, scale=d**-0.5,
    )
    if tree_nodes:
        case["tree_mask"] = torch.cat([_random_tree_mask(tree_nodes, gen) for _ in range(b)])
        case["tree_lens"] = torch.full((b,), tree_nodes, dtype=torch.int32)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}


def _random_tree_mask(n: int, gen) -> torch.Tensor:  # [n, n] ancestor-or-self of a random tree
    mask = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        mask[i] |= mask[int(torch.randint(0, i, (1,), generator=gen))]
    return mask


def dense_sdpa(case: dict):
    """SDPA over contiguous K/V: returns a closure timing only the attention, not the gather."""
    q, tables, page = case["q"], case["block_tables"], case["k_cache"].shape[1]
    b, kv_len = tables.shape[0], int(case["kv_lens"][0])
    pos = torch.arange(kv_len, device=q.device)
    slots = tables[:, pos // page].long() * page + pos % page  # [B, kv_len]
    gather = lambda c: c.flatten(0, 1)[slots].transpose(1, 2).contiguous()  # noqa: E731
    k, v = gather(case["k_cache"]), gather(case["v_cache"])  # [B, Hkv, kv_len, D]
    qd = q.view(b, -1, *q.shape[1:]).transpose(1, 2)  # [B, Hq, q_per_seq, D]
    mask = None
    if case["tree_mask"] is not None:  # [B, 1, q_per_seq, kv_len]: prefix visible, then the tree
        w = case["tree_mask"].shape[1]
        mask = torch.ones(b, 1, qd.shape[2], kv_len, dtype=torch.bool, device=q.device)
        mask[..., kv_len - w :] = case["tree_mask"].view(b, 1, -1, w)

    def run() -> torch.Tensor:  # [T, Hq, D]
        out = F.scaled_dot_product_attention(
            qd, k, v, attn_mask=mask, scale=case["scale"], enable_gqa=True
        )
        return out.transpose(1, 2).reshape(q.shape)

    return run


def attention_bytes(case: dict) -> int:
    """K/V of every visible key, plus Q read and the output written."""
    k = case["k_cache"]
    kv_keys = int(case["kv_lens"].sum())
    return 2 * kv_keys * k.shape[2] * k.shape[3] * k.element_size() + 2 * case["q"].nbytes


def bench_attention(args, prefix: int, tree_nodes: int, copy_gbps: float, gen) -> dict:
    from triton.testing import do_bench

    attn = importlib.import_module("specgrove.kernels.tree_attention")
    case = build_case(args, prefix, tree_nodes, "cuda", gen)
    runs = {
        "triton": lambda: attn.tree_attention(**case),
        "reference": lambda: attn.tree_attention_ref(**case),
        "sdpa_dense": dense_sdpa(case),
    }
    expect = runs["reference"]()
    row = {"mode": "verify" if tree_nodes else "decode", "prefix": prefix,
           "queries_per_seq": max(tree_nodes, 1)}
    for name, fn in runs.items():
        row[f"{name}_max_abs_diff"] = (fn().float() - expect.float()).abs().max().item()
        ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        row[f"{name}_ms"] = ms
        row[f"{name}_gbps"] = attention_bytes(case) / ms / 1e6
        row[f"{name}_of_copy_bw"] = row[f"{name}_gbps"] / copy_gbps
    return row


def bench_paged_kv(args, prefix: int, gen) -> dict:
    """write_kv of one verification step's tree nodes (one layer) and a commit of 8-node paths
    (32 layers), each against its reference."""
    from triton.testing import do_bench

    paged = importlib.import_module("specgrove.kernels.paged_kv")
    case = build_case(args, prefix, args.tree, "cuda", gen)
    k_cache, v_cache, t = case["k_cache"], case["v_cache"], case["q"].shape[0]
    k = torch.randn(t, *k_cache.shape[2:], device="cuda", dtype=k_cache.dtype)
    slots = torch.randperm(k_cache.shape[0] * k_cache.shape[1], device="cuda")[:t]
    kv_cache = torch.empty(32, 2, k_cache.shape[0], *k_cache.shape[1:], dtype=k_cache.dtype,
                           device="cuda")
    src, dst = slots[: 8 * args.batch], slots.flip(0)[: 8 * args.batch]
    ms = lambda fn: do_bench(fn, warmup=25, rep=100, return_mode="median")  # noqa: E731
    return {
        "write_kv_tokens": t,
        "write_kv_ms": ms(lambda: paged.write_kv(k_cache, v_cache, k, k, slots)),
        "write_kv_ref_ms": ms(lambda: paged.write_kv_ref(k_cache, v_cache, k, k, slots)),
        "commit_kv_slots_x_layers": [src.numel(), 32],
        "commit_kv_ms": ms(lambda: paged.commit_kv(kv_cache, src, dst)),
        "commit_kv_ref_ms": ms(lambda: paged.commit_kv_ref(kv_cache, src, dst)),
    }


def copy_bandwidth_gbps() -> float:
    """Device-to-device copy of 1 GiB: (read + write) bytes over the median time."""
    from triton.testing import do_bench

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=200, return_mode="median")
    return 2 * src.nbytes / ms / 1e6


def git_commit() -> str:
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    sha = git("rev-parse", "HEAD") or "unknown"
    return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_cuda(args) -> dict:
    import triton

    gen = torch.Generator().manual_seed(0)
    copy_gbps = copy_bandwidth_gbps()
    rows = []
    for prefix in args.prefixes:
        for tree_nodes in (0, args.tree):
            rows.append(bench_attention(args, prefix, tree_nodes, copy_gbps, gen))
            print(_summary(rows[-1]), flush=True)
            torch.cuda.empty_cache()
    shape = {k: getattr(args, k) for k in ("batch", "q_heads", "kv_heads", "head_dim", "page",
                                           "tree", "dtype")}
    return {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "triton": triton.__version__, "git_commit": git_commit(), "shape": shape,
        "copy_bandwidth_gbps": copy_gbps, "attention": rows,
        "paged_kv": bench_paged_kv(args, 2048, gen),
    }


def _summary(row: dict) -> str:
    names = ("triton", "reference", "sdpa_dense")
    times = "  ".join(f"{n} {row[f'{n}_ms']:8.3f} ms" for n in names)
    return (f"{row['mode']:6s} prefix {row['prefix']:5d}  {times}  triton "
            f"{row['triton_gbps']:7.1f} GB/s ({100 * row['triton_of_copy_bw']:.0f}% of copy)")


def smoke(args) -> int:
    """Tiny case under the interpreter: kernel, reference and SDPA baseline must agree."""
    attn = importlib.import_module("specgrove.kernels.tree_attention")
    args.batch, args.q_heads, args.kv_heads, args.head_dim, args.page = 3, 4, 2, 32, 16
    gen = torch.Generator().manual_seed(0)
    for prefix, tree_nodes in ((37, 0), (21, 5)):
        case = build_case(args, prefix, tree_nodes, "cpu", gen)
        expect = attn.tree_attention_ref(**case).float()
        for name, out in (("triton", attn.tree_attention(**case)), ("sdpa", dense_sdpa(case)())):
            err = (out.float() - expect).abs().max().item()
            print(f"smoke prefix {prefix} tree {tree_nodes} {name}: max |diff| {err:.2e}")
            if err > 5e-2:
                return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        if not args.smoke:
            print("benchmarks/kernel_attention.py times CUDA kernels and found no CUDA device; "
                  "nothing measured (--smoke runs a tiny interpreter check).", file=sys.stderr)
            return 1
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
        return smoke(args)
    results = run_cuda(args)
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
