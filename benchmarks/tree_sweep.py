"""Which tree budget pays best with the shipped EAGLE head, measured on tuning prompts.

The prompts come from the distillation prompt factory under a seed of their own (neither the
training prompts nor ``dev.jsonl``: the dev set stays for reporting). For each prompt, plain
decoding and every candidate tree decode back to back (interleaved, ``--repeats`` times,
medians) through the gateway's step loop over the in-process ports, batch 1, greedy, chat
template, ``--max-tokens`` new tokens with EOS ignored. Reports tokens/s, its ratio to plain,
and tau per tree; the best ratio is the candidate for ``--default-tree``.

    python benchmarks/tree_sweep.py --trees "4:3 6:4 8:4 8:5 10:5 12:6 2,2,1,1" \
        --out benchmarks/results/tree_sweep_cpu.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: benchmarks.common
from benchmarks.common import local_ports, meta

MODEL = "smollm2-135m-instruct"
TUNING_SEED = 424242  # not a distill training seed (those start at 0), not dev.jsonl


def decode(ports, prompt: tuple[int, ...], n: int, tree: str | None) -> tuple[float, float]:
    from gateway.offline import complete
    from gateway.job import JobSpec
    from specgrove.config import parse_tree_option
    from specgrove.types import SamplingParams, TreeBudget

    budget = parse_tree_option(tree) if tree else TreeBudget.off()
    spec = JobSpec(prompt, n, SamplingParams(), drafter="eagle" if tree else "", budget=budget,
                   ignore_eos=True)
    start = time.perf_counter()
    (out,) = asyncio.run(complete(ports[0], ports[1], [spec]))
    return n / (time.perf_counter() - start), out.stats.mean_acceptance_length


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", default="4:3 6:4 8:4 8:5 10:5 12:6",
                    help="space-separated tree options (NODES:DEPTH[:TOP_K] or a static shape 4,2,1)")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from draft_service.training.prompts import seed_prompts

    target, draft, codec = local_ports(MODEL, args.dtype, drafters={"eagle": f"eagle:{MODEL}"},
                                       default="eagle")
    prompts = [tuple(codec.encode_chat(list(p.messages))) for p in seed_prompts(TUNING_SEED, args.prompts)]
    trees = args.trees.split()
    tps: dict[str, list[float]] = {"plain": [], **{t: [] for t in trees}}
    taus: dict[str, list[float]] = {t: [] for t in trees}
    decode((target, draft), prompts[0], 16, trees[0])  # warm-up: kernels built, caches filled
    for i, prompt in enumerate(prompts):
        for _ in range(args.repeats):
            tps["plain"].append(decode((target, draft), prompt, args.max_tokens, None)[0])
            for t in trees:
                rate, tau = decode((target, draft), prompt, args.max_tokens, t)
                tps[t].append(rate)
                taus[t].append(tau)
        print(i, {k: round(v[-1], 1) for k, v in tps.items()}, flush=True)
    plain = statistics.median(tps["plain"])
    table = {t: {"tokens_per_s": statistics.median(tps[t]), "vs_plain": statistics.median(tps[t]) / plain,
                 "tau": statistics.mean(taus[t])} for t in trees}
    result = {"plain_tokens_per_s": plain, "trees": table,
              "best": max(trees, key=lambda t: table[t]["vs_plain"])}
    print(json.dumps(result, indent=1))
    if args.out:
        info = meta(model=MODEL, dtype=args.dtype, prompts=args.prompts, tuning_seed=TUNING_SEED,
                    max_tokens=args.max_tokens, repeats=args.repeats)
        Path(args.out).write_text(json.dumps({"meta": info, **result}, indent=2))


if __name__ == "__main__":
    main()
