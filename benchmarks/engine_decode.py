"""Batch-1 greedy decoding on the embedded SmolLM2-135M-Instruct: HF generate vs ours.

Measured in one process, interleaved per prompt and repeat so machine noise hits every method
alike: Hugging Face ``generate`` (the baseline), and the gateway's step loop over the in-process
ports with speculation off (root-only trees) and with the n-gram drafter. Every run produces
exactly ``--max-tokens`` tokens (EOS ignored) so tokens/s compare like for like. Reports medians
per prompt, per category and overall, plus our/HF ratios, as text and JSON.

    python benchmarks/engine_decode.py --prompts ../shared/prompts/dev.jsonl --out results.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: benchmarks.common
from benchmarks.common import HERE, chat_ids, load_prompts, local_ports, meta
from gateway.job import JobSpec
from gateway.offline import complete
from specgrove.modeling.loader import resolve_model
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget


def time_hf(model, prompt: list[int], n: int) -> float:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - len(prompt) == n
    return n / elapsed


def time_ours(target, draft, prompt: list[int], n: int, budget: TreeBudget, drafter: str = ""):
    """One request through the orchestrator over the in-process ports: (tokens/s, tau)."""
    spec = JobSpec(tuple(prompt), n, SamplingParams(), drafter=drafter, budget=budget, ignore_eos=True)
    start = time.perf_counter()
    out = asyncio.run(complete(target, draft, [spec]))[0]
    elapsed = time.perf_counter() - start
    assert len(out.token_ids) == n, out.error
    return n / elapsed, out.stats.mean_acceptance_length


def run(args) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = resolve_model(args.model)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    target, draft, codec = local_ports(args.model, "float32", kv_blocks=512)
    ngram_budget = TreeBudget(max_nodes=args.ngram_nodes, max_depth=args.ngram_depth)
    rows = []
    warm = codec.encode("warm up")
    time_hf(hf, warm, 8)
    time_ours(target, draft, warm, 8, TreeBudget.off())
    for item in load_prompts(Path(args.prompts), args.limit):
        prompt = chat_ids(codec, item["prompt"])
        hf_tps, plain_tps, ngram_tps, taus = [], [], [], []
        with torch.inference_mode():
            for _ in range(args.repeats):
                hf_tps.append(time_hf(hf, prompt, args.max_tokens))
                plain_tps.append(time_ours(target, draft, prompt, args.max_tokens, TreeBudget.off())[0])
                tps, tau = time_ours(target, draft, prompt, args.max_tokens, ngram_budget, "ngram")
                ngram_tps.append(tps)
                taus.append(tau)
        row = {
            "id": item["id"], "category": item["category"], "prompt_tokens": len(prompt),
            "hf_tps": statistics.median(hf_tps), "plain_tps": statistics.median(plain_tps),
            "ngram_tps": statistics.median(ngram_tps), "ngram_tau": statistics.median(taus),
        }
        row["plain_vs_hf"] = row["plain_tps"] / row["hf_tps"]
        row["ngram_vs_plain"] = row["ngram_tps"] / row["plain_tps"]
        rows.append(row)
        print(_fmt(row["id"], row), flush=True)
    info = meta(model=args.model, dtype="float32", batch=1, max_tokens=args.max_tokens,
                repeats=args.repeats, prompts=str(args.prompts),
                ngram_budget={"nodes": args.ngram_nodes, "depth": args.ngram_depth})
    return {"meta": info, "prompts": rows, "summary": _summarise(rows)}


def _summarise(rows: list[dict]) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[r["category"]].append(r)
    groups["overall"] = rows
    keys = ("hf_tps", "plain_tps", "ngram_tps", "ngram_tau", "plain_vs_hf", "ngram_vs_plain")
    return {name: {k: statistics.median(r[k] for r in rs) for k in keys} | {"n": len(rs)}
            for name, rs in groups.items()}


def _fmt(name: str, r: dict) -> str:
    return (f"{name:<12} hf {r['hf_tps']:6.1f}  plain {r['plain_tps']:6.1f} ({r['plain_vs_hf']:.2f}x)"
            f"  ngram {r['ngram_tps']:6.1f} tau {r['ngram_tau']:.2f} ({r['ngram_vs_plain']:.2f}x plain)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--ngram-nodes", type=int, default=8)
    ap.add_argument("--ngram-depth", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = run(args)
    print()
    for name, s in result["summary"].items():
        print(_fmt(f"[{name}]", s))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
