"""What the default speculation buys through ``specgrove up``, per prompt category.

Starts ``specgrove up`` (the embedded model and its default drafter unless told otherwise) and
sends every prompt of a JSONL file twice in a row -- the gateway's default speculation, then
``"speculation": {"drafter": "none"}`` -- so that machine drift hits both alike (repeated
``--repeats`` times, medians). Batch 1: one request at a time. Reports end-to-end tokens/s of
each, their ratio, the mean acceptance length tau, per category and overall, and the share of
completions whose text equals the plain one. Then the same prompts from ``--concurrency``
clients at once, default speculation (with the load controller) against off: throughput.

    python benchmarks/speculation_speedup.py --prompts ../shared/prompts/dev.jsonl \
        --out benchmarks/results/speculation_speedup_cpu.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: benchmarks.common
from benchmarks.common import HERE, load_prompts, meta
from benchmarks.serve import wait_healthy

OFF = {"drafter": "none"}


async def complete(client: httpx.AsyncClient, base: str, model: str, prompt: str, args,
                   speculation: dict | None, seed: int | None) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": args.max_tokens, "temperature": args.temperature}
    if seed is not None:
        body["seed"] = seed
    if speculation is not None:
        body["speculation"] = speculation
    start = time.perf_counter()
    r = await client.post(base + "/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    out = r.json()
    tokens = out["usage"]["completion_tokens"]
    return {"tps": tokens / elapsed, "tokens": tokens, "seconds": elapsed,
            "tau": out["specgrove"]["mean_acceptance_length"], "text": out["choices"][0]["message"]["content"],
            "drafter": out["specgrove"]["drafter"]}


async def batch_one(base: str, args, rows: list[dict]) -> list[dict]:
    results = []
    async with httpx.AsyncClient(timeout=900) as client:
        for i, row in enumerate(rows):
            seed = args.seed + i if args.temperature > 0 else None
            runs = {"spec": [], "off": []}
            for _ in range(args.repeats):  # interleaved: spec, off, spec, off ...
                runs["spec"].append(await complete(client, base, args.model, row["prompt"], args, args.spec, seed))
                runs["off"].append(await complete(client, base, args.model, row["prompt"], args, OFF, seed))
            spec_tps = statistics.median(r["tps"] for r in runs["spec"])
            off_tps = statistics.median(r["tps"] for r in runs["off"])
            result = {"id": row["id"], "category": row["category"], "spec_tps": spec_tps, "off_tps": off_tps,
                      "speedup": spec_tps / off_tps, "tau": statistics.median(r["tau"] for r in runs["spec"]),
                      "tokens": runs["off"][0]["tokens"], "drafter": runs["spec"][0]["drafter"],
                      "identical": runs["spec"][0]["text"] == runs["off"][0]["text"]}
            results.append(result)
            print(f"{row['id']:<10} {row['category']:<10} spec {spec_tps:6.1f} off {off_tps:6.1f} tok/s "
                  f"x{result['speedup']:.2f} tau {result['tau']:.2f} same={result['identical']}", flush=True)
    return results


async def throughput(base: str, args, rows: list[dict], clients: int, speculation) -> float:
    queue = [r["prompt"] for r in rows]
    tokens = 0

    async def worker(client):
        nonlocal tokens
        while queue:
            out = await complete(client, base, args.model, queue.pop(0), args, speculation, None)
            tokens += out["tokens"]

    async with httpx.AsyncClient(timeout=900) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return tokens / (time.perf_counter() - start)


def summarise(results: list[dict]) -> dict:
    groups = defaultdict(list)
    for r in results:
        groups[r["category"]].append(r)
    groups["overall"] = results
    out = {}
    for name, rs in groups.items():
        spec = sum(r["tokens"] for r in rs) / sum(r["tokens"] / r["spec_tps"] for r in rs)
        off = sum(r["tokens"] for r in rs) / sum(r["tokens"] / r["off_tps"] for r in rs)
        out[name] = {"n": len(rs), "spec_tps": spec, "off_tps": off, "speedup": spec / off,
                     "median_speedup": statistics.median(r["speedup"] for r in rs),
                     "tau": statistics.mean(r["tau"] for r in rs),
                     "identical": sum(r["identical"] for r in rs) / len(rs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--concurrency", default="4,8")
    ap.add_argument("--up-args", default="", help="extra `specgrove up` options, e.g. '--dtype float32'")
    ap.add_argument("--port", type=int, default=8200)
    ap.add_argument("--spec", default=None, type=json.loads,
                    help='the speculating arm\'s "speculation" object, e.g. \'{"drafter": "eagle", '
                         '"tree": "1,1,1"}\' [the gateway\'s default speculation]')
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = load_prompts(args.prompts, args.limit)
    cmd = [sys.executable, "-m", "specgrove.cli", "up", "--target", args.model, "--port", str(args.port),
           "--grpc-port", str(args.port + 1), "--target-port", str(args.port + 2),
           "--draft-port", str(args.port + 3), *args.up_args.split()]
    proc = subprocess.Popen(cmd)
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_healthy(base, proc)
        asyncio.run(batch_one(base, argparse.Namespace(**{**vars(args), "max_tokens": 8, "repeats": 1}),
                              rows[:2]))  # warm-up
        results = asyncio.run(batch_one(base, args, rows))
        summary = summarise(results)
        for name, s in summary.items():
            print(f"[{name}] spec {s['spec_tps']:.1f} off {s['off_tps']:.1f} tok/s x{s['speedup']:.2f} "
                  f"tau {s['tau']:.2f} identical {s['identical']:.0%}")
        loads = {}
        for clients in [int(c) for c in args.concurrency.split(",") if c]:
            spec = asyncio.run(throughput(base, args, rows, clients, args.spec))
            off = asyncio.run(throughput(base, args, rows, clients, OFF))
            loads[clients] = {"spec_tps": spec, "off_tps": off, "ratio": spec / off}
            print(f"{clients} clients: spec {spec:.1f} off {off:.1f} tok/s x{spec / off:.2f}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    if args.out:
        info = meta(model=args.model, max_tokens=args.max_tokens, temperature=args.temperature,
                    seed=args.seed, repeats=args.repeats, prompts=str(args.prompts), up_args=args.up_args,
                    spec=args.spec)
        Path(args.out).write_text(json.dumps({"meta": info, "prompts": results, "summary": summary,
                                              "concurrency": loads}, indent=2))


if __name__ == "__main__":
    main()
