"""What pruning forbidden draft tokens saves under structured output.

The target drops every drafted token its grammar forbids (and what hangs below it) before the
verify forward (``GrammarState.prune``): such a node can never be accepted, so the output and
the acceptance length tau are unchanged, and only verified nodes are saved. This runs the same
greedy requests with ``response_format`` json_object through the step loop over in-process ports
(embedded model, bfloat16) twice -- pruning on, and off (the tree verified as drafted) -- per
drafter, and reports tau, drafted nodes, nodes the target verified, and the share of identical
completions (all of them in exact arithmetic, as the float64 tests prove; bfloat16 rounding
differs between tree sizes, which can move a near-tie).

    python benchmarks/grammar_pruning.py --prompts ../shared/prompts/dev.jsonl --limit 12 \
        --out benchmarks/results/grammar_pruning_cpu.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: benchmarks.common
from benchmarks.common import HERE, chat_ids, load_prompts, local_ports, meta
from gateway.job import JobSpec
from gateway.offline import complete
from specgrove.config import parse_tree_option
from specgrove.grammar import GrammarState
from specgrove.sampling_params import Grammar, SamplingParams

ASK = " Answer with one JSON object."


def run(ports, prompts, drafter: str, tree: str, max_tokens: int) -> dict:
    """Greedy json_object requests one at a time: tau, drafted and verified nodes, tokens."""
    target, draft, codec = ports
    verified = []
    engine = target.engine
    forward = engine.runner.run
    def counting(items, **kw):  # every token the target's forward runs (prefill included)
        verified.append(sum(len(i.token_ids) for i in items))
        return forward(items, **kw)
    engine.runner.run = counting
    try:
        outs, prefill_tokens = [], 0
        for prompt in prompts:
            spec = JobSpec(tuple(prompt), max_tokens, SamplingParams(grammar=Grammar("json_object")),
                           drafter=drafter, budget=parse_tree_option(tree))
            outs += asyncio.run(complete(target, draft, [spec], codec))
            prefill_tokens += len(prompt)
    finally:
        engine.runner.run = forward
    return {"tau": statistics.mean(o.stats.mean_acceptance_length for o in outs),
            "drafted_nodes": sum(o.stats.drafted_tokens for o in outs),
            "verified_nodes": sum(verified) - prefill_tokens - sum(o.stats.steps for o in outs),
            "tokens": [list(o.token_ids) for o in outs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--drafters", nargs="+", default=["lookup=ngram@8:4", "eagle=eagle:smollm2-135m-instruct@8:4"],
                    help="NAME=SPEC@TREE")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    specs = {d.split("=", 1)[0]: d.split("=", 1)[1].rsplit("@", 1) for d in args.drafters}
    ports = local_ports(args.model, "bfloat16", drafters={n: s for n, (s, _) in specs.items()},
                        default=next(iter(specs)))
    prompts = [chat_ids(ports[2], p["prompt"] + ASK) for p in load_prompts(args.prompts, args.limit)]
    unpruned = lambda self, tree: (tree, list(range(len(tree))))  # the tree verified as drafted
    rows = {}
    for name, (_, tree) in specs.items():
        pruned = run(ports, prompts, name, tree, args.max_tokens)
        keep, GrammarState.prune = GrammarState.prune, unpruned
        try:
            whole = run(ports, prompts, name, tree, args.max_tokens)
        finally:
            GrammarState.prune = keep
        # Identical in exact arithmetic; in bfloat16 a smaller tree can move a near-tie.
        same = sum(a == b for a, b in zip(pruned.pop("tokens"), whole.pop("tokens"))) / len(prompts)
        rows[name] = {"tree": tree, "identical_completions": same,
                      "pruned": pruned, "unpruned": whole,
                      "verified_saved": 1 - pruned["verified_nodes"] / max(whole["verified_nodes"], 1)}
        print(name, json.dumps(rows[name]), flush=True)
    if args.out:
        info = meta(model=args.model, dtype="bfloat16", prompts=str(args.prompts), limit=args.limit,
                    max_tokens=args.max_tokens, grammar="json_object")
        Path(args.out).write_text(json.dumps({"meta": info, "drafters": rows}, indent=2))


if __name__ == "__main__":
    main()
