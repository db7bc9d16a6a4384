"""Which tree budget pays best with the shipped EAGLE head, measured on tuning prompts.

The prompts come from the distillation prompt factory under a seed of their own (neither the
training prompts nor ``dev.jsonl``: the dev set stays for reporting). For each prompt, plain
decoding and every candidate tree decode back to back (interleaved, ``--repeats`` times,
medians) through the gateway's step loop over the in-process ports, batch 1, greedy, chat
template, ``--max-tokens`` new tokens with EOS ignored. Reports tokens/s, its ratio to plain,
and tau per tree; the best ratio is the candidate for ``--default-tree``. ``--up`` measures
through ``specgrove up`` instead (REST, explicit ``speculation`` per request): the costs
users get, gRPC hops included.

    python benchmarks/tree_sweep.py --trees "4:3 6:4 8:4 8:5 10:5 12:6 2,2,1,1" \
        --out benchmarks/results/tree_sweep_cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: benchmarks.common
from benchmarks.common import decode_tps, local_ports, meta

MODEL = "smollm2-135m-instruct"
TUNING_SEED = 424242  # not a distill training seed (those start at 0), not dev.jsonl


def decode_up(base: str, messages: list[dict], n: int, tree: str | None) -> tuple[float, float]:
    import httpx

    if tree and ":" in tree:  # REST spells a dynamic budget as an object
        tree = dict(zip(("nodes", "depth", "top_k"), map(int, tree.split(":"))))
    speculation = {"drafter": "eagle", "tree": tree} if tree else {"drafter": "none"}
    body = {"model": MODEL, "messages": messages, "max_tokens": n,
            "temperature": 0, "ignore_eos": True, "speculation": speculation}
    start = time.perf_counter()
    r = httpx.post(base + "/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    out = r.json()
    return out["usage"]["completion_tokens"] / (time.perf_counter() - start), out["specgrove"]["mean_acceptance_length"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", default="4:3 6:4 8:4 8:5 10:5 12:6",
                    help="space-separated tree options (NODES:DEPTH[:TOP_K] or a static shape 4,2,1)")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--up", action="store_true", help="through `specgrove up` (REST)")
    ap.add_argument("--port", type=int, default=8300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from draft_service.training.prompts import seed_prompts

    chosen = seed_prompts(TUNING_SEED, args.prompts)
    proc = None
    if args.up:
        import subprocess

        from benchmarks.serve import wait_healthy

        p = args.port
        proc = subprocess.Popen([sys.executable, "-m", "specgrove.cli", "up", "--port", str(p), "--grpc-port",
                                 str(p + 1), "--target-port", str(p + 2), "--draft-port", str(p + 3),
                                 "--dtype", args.dtype])
        base = f"http://127.0.0.1:{p}"
        wait_healthy(base, proc)
        prompts = [list(p.messages) for p in chosen]
        run = lambda prompt, n, tree: decode_up(base, prompt, n, tree)  # noqa: E731
    else:
        target, draft, codec = local_ports(MODEL, args.dtype, drafters={"eagle": f"eagle:{MODEL}"},
                                           default="eagle")
        prompts = [tuple(codec.encode_chat(list(p.messages))) for p in chosen]
        run = lambda prompt, n, tree: decode_tps((target, draft), prompt, n, tree)[:2]  # noqa: E731
    try:
        result = sweep(args, prompts, run)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    print(json.dumps(result, indent=1))
    if args.out:
        info = meta(model=MODEL, dtype=args.dtype, prompts=args.prompts, tuning_seed=TUNING_SEED,
                    max_tokens=args.max_tokens, repeats=args.repeats, through="up" if args.up else "in process")
        Path(args.out).write_text(json.dumps({"meta": info, **result}, indent=2))


def sweep(args, prompts, run) -> dict:
    trees = args.trees.split()
    tps: dict[str, list[float]] = {"plain": [], **{t: [] for t in trees}}
    taus: dict[str, list[float]] = {t: [] for t in trees}
    run(prompts[0], 16, trees[0])  # warm-up: kernels built, caches filled
    for i, prompt in enumerate(prompts):
        for _ in range(args.repeats):
            tps["plain"].append(run(prompt, args.max_tokens, None)[0])
            for t in trees:
                rate, tau = run(prompt, args.max_tokens, t)
                tps[t].append(rate)
                taus[t].append(tau)
        print(i, {k: round(v[-1], 1) for k, v in tps.items()}, flush=True)
    plain = statistics.median(tps["plain"])
    table = {t: {"tokens_per_s": statistics.median(tps[t]), "vs_plain": statistics.median(tps[t]) / plain,
                 "tau": statistics.mean(taus[t])} for t in trees}
    return {"plain_tokens_per_s": plain, "trees": table, "best": max(trees, key=lambda t: table[t]["vs_plain"])}


if __name__ == "__main__":
    main()
