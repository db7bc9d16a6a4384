"""Median target verify-step time, tensor-parallel (TP=2) against one rank (TP=1).

A synthetic llama with random weights (~28M parameters; 8 query heads, 4 KV heads and an
intermediate size of 1408, so two ranks divide it) is saved to a temporary directory. For each
configuration the target engine prefills ``batch`` sequences of ``--prompt-len`` tokens, then
times ``TargetEngine.verify`` (forward + greedy acceptance + commit copies) of a 1-node tree
(plain decoding) and an 8-node tree per sequence, for batches of 1 and 4. Variants: TP=1 with
every core, TP=1 with half of them (what each TP=2 rank gets), TP=2 with ``cores // 2``
intra-op threads per rank; their steps are interleaved so background load hits all alike.
Prints a table and writes JSON with machine information.

    python benchmarks/tp_step.py --out benchmarks/results/tp_step.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from specgrove.config import ModelRunConfig
from specgrove.kv import KVCacheConfig
from specgrove.tree import TokenTree
from specgrove.types import PrefillRequest, VerifyItem
from target_service.engine import TargetEngine
from target_service.tp import start_tp_runner

HERE = Path(__file__).parent
TREE_PARENTS = (-1, 0, 0, 1, 1, 2, 2, 3)  # 8 nodes, depth 3: the shape of a small static tree


def save_model(path: Path, vocab: int) -> int:
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def tree(pending: int, nodes: int) -> TokenTree:
    return TokenTree((pending, *range(1000, 1000 + nodes - 1)), TREE_PARENTS[:nodes])


class Variant:
    """One way to run the target: a tensor-parallel size and rank 0's intra-op threads."""

    def __init__(self, engine: TargetEngine, tp: int, threads: int) -> None:
        self.engine, self.tp, self.threads = engine, tp, threads
        self.pending: dict[int, int] = {}
        self.times: list[float] = []

    def prefill(self, prompts: list[list[int]], first_id: int) -> None:
        reqs = [PrefillRequest(first_id + i, tuple(p)) for i, p in enumerate(prompts)]
        self.pending = {r.seq_id: r.first_token for r in self.engine.prefill(reqs)}
        self.times = []

    def step(self, nodes: int, record: bool) -> None:
        torch.set_num_threads(self.threads)
        items = [VerifyItem(s, tree(tok, nodes)) for s, tok in self.pending.items()]
        start = time.perf_counter()
        results = self.engine.verify(items)
        if record:
            self.times.append(time.perf_counter() - start)
        self.pending = {r.seq_id: r.bonus_token for r in results}

    def release(self) -> None:
        for seq_id in self.pending:
            self.engine.release(seq_id)


def measure(variants: list[Variant], batch: int, nodes: int, args) -> list[dict]:
    """Steps of all variants interleaved, so machine noise hits each of them alike."""
    gen = torch.Generator().manual_seed(batch * 100 + nodes)
    prompts = torch.randint(0, args.vocab, (batch, args.prompt_len), generator=gen).tolist()
    for i, v in enumerate(variants):
        v.prefill(prompts, first_id=1000 * (batch * 100 + nodes) + 100 * i)
    for step in range(args.warmup + args.repeats):
        for v in variants:
            v.step(nodes, record=step >= args.warmup)
    rows = []
    for v in variants:
        v.release()
        rows.append({
            "tp": v.tp, "threads_per_rank": v.threads, "batch": batch, "tree_nodes": nodes,
            "median_ms": 1e3 * statistics.median(v.times),
            "p90_ms": 1e3 * statistics.quantiles(v.times, n=10)[-1],
        })
        print(_fmt(rows[-1]), flush=True)
    return rows


def run(path: Path, args) -> list[dict]:
    """TP=1 with all cores, TP=1 with half of them (per-rank compute of TP=2), and TP=2."""
    cores = len(os.sched_getaffinity(0))
    run = ModelRunConfig(str(path), "float32", "cpu", "torch", KVCacheConfig(block_size=16, num_blocks=512))
    start = lambda tp: start_tp_runner(run, tp, 120.0)
    torch.set_num_threads(max(1, cores // 2))  # rank 0's share while the workers start
    tp2 = start(2)
    try:
        one = TargetEngine(start(1))
        variants = [Variant(one, 1, cores), Variant(one, 1, max(1, cores // 2)),
                    Variant(TargetEngine(tp2), 2, max(1, cores // 2))]
        return [row for batch in (1, 4) for nodes in (1, 8)
                for row in measure(variants, batch, nodes, args)]
    finally:
        tp2.close()


def _fmt(r: dict) -> str:
    return (f"tp={r['tp']} threads/rank={r['threads_per_rank']} batch={r['batch']} "
            f"nodes={r['tree_nodes']}: median {r['median_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms")


def _meta(args, params: int) -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    return {
        "commit": commit, "machine": platform.platform(), "processor": platform.processor(),
        "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__, "dtype": "float32",
        "params": params, "prompt_len": args.prompt_len, "warmup": args.warmup,
        "repeats": args.repeats, "backend": "gloo", "kernels": "torch",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tp-step-") as tmp:
        params = save_model(Path(tmp), args.vocab)
        rows = run(Path(tmp), args)
    result = {"meta": _meta(args, params), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
