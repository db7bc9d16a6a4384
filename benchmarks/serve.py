"""Serving benchmark: N concurrent streaming clients against ``specgrove up``.

Starts ``specgrove up`` on a model (default: the embedded SmolLM2-135M-Instruct), then for each
concurrency runs the same requests with speculation off and on (same process, same run) and
reports per mode: TTFT (time to the first streamed token), TPOT (per output token, not per
chunk: (last - first) / (tokens - 1)), end-to-end latency (medians and p90), throughput (output
tokens per second over the wall time) and mean acceptance length.

    python benchmarks/serve.py --prompts ../shared/prompts/dev.jsonl --concurrency 1,4,8 --out results.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent
MODES = {"off": {"drafter": "none"}, "on": None}  # None = the gateway's default speculation


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str,
                      max_tokens: int, speculation) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if speculation is not None:
        body["speculation"] = speculation
    start = time.perf_counter()
    first = last = None
    tokens, stats = 0, {}
    async with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = first or now
                last = now
            if "specgrove" in chunk:
                stats = chunk["specgrove"]
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    first = first or end
    last = last or end
    return {"ttft": first - start, "tpot": (last - first) / max(tokens - 1, 1), "e2e": end - start,
            "tokens": tokens, "tau": stats.get("mean_acceptance_length", 1.0)}


async def run_mode(base: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
                   speculation) -> dict:
    queue = list(prompts)
    results: list[dict] = []

    async def worker(client):
        while queue:
            results.append(await one_request(client, base + "/v1/chat/completions", model,
                                             queue.pop(0), max_tokens, speculation))

    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    med = lambda k: statistics.median(r[k] for r in results)
    p90 = lambda k: sorted(r[k] for r in results)[int(0.9 * (len(results) - 1))]
    return {"requests": len(results), "ttft_ms": med("ttft") * 1e3, "ttft_p90_ms": p90("ttft") * 1e3,
            "tpot_ms": med("tpot") * 1e3, "e2e_s": med("e2e"), "e2e_p90_s": p90("e2e"),
            "throughput_tps": sum(r["tokens"] for r in results) / wall,
            "mean_acceptance_length": statistics.mean(r["tau"] for r in results)}


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("specgrove up exited during start-up")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("specgrove up did not become healthy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--requests", type=int, default=16, help="requests per mode and concurrency")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--default-tree", default="8:4")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [json.loads(l)["prompt"] for l in Path(args.prompts).read_text().splitlines() if l.strip()]
    prompts = [rows[i % len(rows)] for i in range(args.requests)]
    cmd = [sys.executable, "-m", "specgrove.cli", "up", "--target", args.model, "--port", str(args.port),
           "--grpc-port", str(args.port + 1), "--target-port", str(args.port + 2),
           "--draft-port", str(args.port + 3), "--default-tree", args.default_tree]
    proc = subprocess.Popen(cmd)
    base = f"http://127.0.0.1:{args.port}"
    results = []
    try:
        wait_healthy(base, proc)
        asyncio.run(run_mode(base, args.model, prompts[:2], 1, 8, None))  # warm-up
        for conc in [int(c) for c in args.concurrency.split(",")]:
            for mode, spec in MODES.items():
                r = asyncio.run(run_mode(base, args.model, prompts, conc, args.max_tokens, spec))
                r.update(concurrency=conc, speculation=mode)
                results.append(r)
                print(f"c={conc:2d} spec={mode:3s} TTFT {r['ttft_ms']:7.0f} ms  TPOT {r['tpot_ms']:6.1f} ms  "
                      f"e2e {r['e2e_s']:5.2f} s  {r['throughput_tps']:6.1f} tok/s  "
                      f"tau {r['mean_acceptance_length']:.2f}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    meta = {"machine": platform.platform(), "model": args.model, "max_tokens": args.max_tokens,
            "requests": args.requests, "default_tree": args.default_tree, "prompts": args.prompts,
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
