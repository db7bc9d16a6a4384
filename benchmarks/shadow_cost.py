"""What shadow drafting costs the live step, and what the shadow reports.

The same greedy requests (embedded model, bfloat16, batch 1, through the step loop over the
in-process ports) decode plainly, plainly with n-gram lookup in the shadow, and with lookup
drafting live; settings interleaved over repeats, medians of tokens/s. The shadow's tau is
compared with the live run's (equal in exact arithmetic; in bfloat16 a tree can move a near-tie,
so the live run's tokens, and with them its tau, may differ a little).

    python benchmarks/shadow_cost.py --prompts ../shared/prompts/dev.jsonl --limit 10 \
        --out benchmarks/results/shadow_cost_cpu.json
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
from benchmarks.common import HERE, chat_ids, load_prompts, local_ports, meta
from gateway.job import JobSpec
from gateway.offline import complete
from specgrove.config import parse_tree_option
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget


def run(ports, prompts, setting: str, tree: TreeBudget, max_tokens: int) -> tuple[float, float]:
    """(tokens/s, tau) of one setting: ``off``, ``off+shadow`` or ``live``."""
    target, draft, codec = ports
    specs = [JobSpec(tuple(p), max_tokens, SamplingParams(), ignore_eos=True,
                     drafter="lookup" if setting == "live" else "",
                     budget=tree if setting == "live" else TreeBudget.off(),
                     shadow=("lookup",) if setting == "off+shadow" else (), shadow_budget=tree)
             for p in prompts]
    start, outs = time.perf_counter(), []
    for spec in specs:  # batch 1
        outs += asyncio.run(complete(target, draft, [spec], codec))
    tps = sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)
    stats = [o.job.shadows[0].stats if setting == "off+shadow" else o.stats for o in outs]
    tau = (sum(s.accepted_tokens for s in stats) + sum(s.steps for s in stats)) / sum(s.steps for s in stats)
    return tps, tau


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--tree", default="8:4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    ports = local_ports(args.model, "bfloat16", drafters={"lookup": "ngram"}, default="lookup")
    prompts = [chat_ids(ports[2], p["prompt"]) for p in load_prompts(args.prompts, args.limit)]
    tree = parse_tree_option(args.tree)
    settings = ("off", "off+shadow", "live")
    run(ports, prompts[:1], "off", tree, 8)  # warm-up
    results = {s: [] for s in settings}
    for _ in range(args.repeats):
        for s in settings:
            results[s].append(run(ports, prompts, s, tree, args.max_tokens))
    base = statistics.median(t for t, _ in results["off"])
    rows = {s: {"tokens_per_s": statistics.median(t for t, _ in rs),
                "vs_off": statistics.median(t for t, _ in rs) / base, "tau": rs[0][1]}
            for s, rs in results.items()}
    for s, r in rows.items():
        print(f"{s:11s} {r['tokens_per_s']:6.1f} tok/s  {r['vs_off']:.3f}x off  tau {r['tau']:.3f}")
    if args.out:
        info = meta(model=args.model, dtype="bfloat16", prompts=str(args.prompts), limit=args.limit,
                    max_tokens=args.max_tokens, tree=args.tree, repeats=args.repeats, shadow="lookup")
        Path(args.out).write_text(json.dumps({"meta": info, "settings": rows}, indent=2))


if __name__ == "__main__":
    main()
