"""Acceptance under sampling with position-keyed noise, with and without coupled drafting,
and what the noise costs.

For each prompt and temperature, one seeded request through the step loop over the in-process
ports with a model drafter (by default the target drafting for itself, which isolates the
effect of coupling: an uncoupled self-draft proposes its top-k, a coupled one the token the
target will sample), coupled and uncoupled. Reports the mean acceptance length tau per
category and overall, and checks that coupled and uncoupled runs emit identical tokens.
Then times the noise: one position's Gumbel row at the model's vocabulary, and the per-node
work of verification (scaled logits + noise, argmax).

    python benchmarks/sampling_acceptance.py --prompts ../shared/prompts/dev.jsonl \
        --out benchmarks/results/sampling_acceptance_cpu.json
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
from specgrove.config import parse_tree_option
from specgrove.sampling import position_noise, sampled_tokens, target_logits
from specgrove.sampling_params import SamplingParams


def run_prompts(args) -> list[dict]:
    drafter = f"model:{args.draft}" if args.draft else f"model:{args.model}"
    target, draft, codec = local_ports(args.model, args.dtype, drafters={"draft": drafter}, default="draft")
    budget = parse_tree_option(args.tree)
    rows = []
    for item in load_prompts(args.prompts, args.limit):
        prompt = tuple(chat_ids(codec, item["prompt"]))
        row = {"id": item["id"], "category": item["category"]}
        for temp in args.temperatures:
            tokens = {}
            for coupled in (False, True):
                spec = JobSpec(prompt, args.max_tokens, SamplingParams(temp, seed=args.seed),
                               drafter="draft", budget=budget, coupled=coupled, ignore_eos=True)
                (out,) = asyncio.run(complete(target, draft, [spec]))
                key = f"tau_T{temp}_{'coupled' if coupled else 'uncoupled'}"
                row[key] = out.stats.mean_acceptance_length
                tokens[coupled] = out.token_ids
            row[f"same_tokens_T{temp}"] = tokens[False] == tokens[True]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def noise_cost(vocab: int, repeats: int = 50) -> dict:
    """µs for one position's noise row, and for one tree node's sampled token given the row."""
    position_noise(1, [1], vocab)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        position_noise(1, [i], vocab)
        times.append(time.perf_counter() - start)
    logits = torch.randn(16, vocab)
    noise = position_noise(1, range(16), vocab)
    params = SamplingParams(temperature=0.7)
    node_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sampled_tokens(target_logits(logits, params), noise)
        node_times.append((time.perf_counter() - start) / 16)
    return {"vocab": vocab, "noise_row_us": 1e6 * statistics.median(times),
            "per_node_sample_us": 1e6 * statistics.median(node_times)}


def summarise(rows: list[dict]) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[r["category"]].append(r)
    groups["overall"] = rows
    keys = [k for k in rows[0] if k.startswith("tau_")]
    return {name: {k: statistics.mean(r[k] for r in rs) for k in keys} | {"n": len(rs)}
            for name, rs in groups.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--draft", default=None, help="draft model path [the target itself]")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--tree", default="8:4")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cost = noise_cost(49152)
    print(json.dumps(cost), flush=True)
    rows = run_prompts(args)
    summary = summarise(rows)
    for name, s in summary.items():
        print(name, {k: round(v, 3) for k, v in s.items()})
    if args.out:
        info = meta(model=args.model, draft=args.draft or args.model, dtype=args.dtype, tree=args.tree,
                    max_tokens=args.max_tokens, seed=args.seed, prompts=str(args.prompts))
        Path(args.out).write_text(json.dumps({"meta": info, "noise_cost": cost, "prompts": rows,
                                              "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
