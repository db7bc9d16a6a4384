"""Throughput with 1 vs N target replicas behind one gateway, and a kill test.

Starts ``specgrove up --target-replicas N`` on a model (default: the embedded SmolLM2-135M) for
each replica count, alternating the counts over ``--repeats`` rounds so that drift hits both
alike, and runs the same chat requests at each concurrency (greedy, streamed; the gateway's
default speculation). Reports output tokens per second over the wall time (median over rounds)
and the ratio against one replica.

Kill test (``--kill``): with the largest replica count and concurrency, SIGKILL one target
replica once every stream has its first tokens; every request must still finish, and greedy
outputs are compared with the same requests served without a kill.

    python benchmarks/replicas.py --prompts ../shared/prompts/dev.jsonl --replicas 1,2 \
        --concurrency 8,16 --kill --out benchmarks/results/replicas_cpu.json

On a machine with few cores, replicas share them: expect little or no gain there. ``up`` gives
each of N replicas 1/N of the cores (``OMP_NUM_THREADS``); ``--threads-per-replica T`` sets the
budget to T x N instead (T = cores oversubscribes them, as before ``up`` split them).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import load_prompts, meta  # noqa: E402
from benchmarks.serve import run_mode, wait_healthy  # noqa: E402
from specgrove.service import free_ports  # noqa: E402


def start_up(model: str, replicas: int, port: int, threads: int | None) -> subprocess.Popen:
    env = dict(os.environ)
    if threads:  # up splits this budget between the replicas
        env["OMP_NUM_THREADS"] = str(threads * replicas)
    cmd = [sys.executable, "-m", "specgrove.cli", "up", "--target", model, "--port", str(port),
           "--grpc-port", str(port + 1), "--target-port", str(port + 2), "--draft-port", str(port + 3),
           "--target-replicas", str(replicas), "--log-stats-interval", "0", "--disable-log-requests"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_up(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()


def pid_listening_on(port: int) -> int | None:
    """The specgrove process started with ``--port PORT``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"specgrove.cli" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1] == str(port).encode():
                return int(entry.name)
    return None


async def greedy_texts(base: str, model: str, prompts: list[str], max_tokens: int, concurrency: int,
                       kill_port: int | None = None) -> dict:
    """Stream every prompt (``concurrency`` at a time); with ``kill_port``, SIGKILL the replica
    on it once every stream of the first wave has tokens."""
    texts: list[str | None] = [None] * len(prompts)
    errors: list[str] = []
    first_tokens = 0
    killed_at = None

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal first_tokens
        body = {"model": model, "messages": [{"role": "user", "content": prompts[i]}],
                "max_tokens": max_tokens, "temperature": 0, "stream": True}
        out, counted = "", False
        async with client.stream("POST", base + "/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    errors.append(chunk["error"]["message"])
                    return
                if chunk.get("choices"):
                    out += chunk["choices"][0]["delta"].get("content") or ""
                    if not counted:
                        counted, first_tokens = True, first_tokens + 1
        texts[i] = out

    async def killer() -> None:
        nonlocal killed_at
        while first_tokens < min(concurrency, len(prompts)):
            await asyncio.sleep(0.05)
        os.kill(pid_listening_on(kill_port), signal.SIGKILL)
        killed_at = time.perf_counter()

    queue = list(range(len(prompts)))

    async def worker(client):
        while queue:
            await one(queue.pop(0), client)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=900) as client:
        tasks = [worker(client) for _ in range(concurrency)] + ([killer()] if kill_port else [])
        await asyncio.gather(*tasks)
    return {"texts": texts, "errors": errors, "wall_s": time.perf_counter() - start,
            "killed_after_s": None if killed_at is None else killed_at - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(Path(__file__).parent / "prompts.jsonl"))
    ap.add_argument("--requests", type=int, default=32, help="requests per replica count and concurrency")
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--concurrency", default="8,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads-per-replica", type=int, default=None)
    ap.add_argument("--kill", action="store_true", help="also run the kill test")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()  # others' work on the same cores skews the numbers
    rows = load_prompts(args.prompts)
    prompts = [rows[i % len(rows)]["prompt"] for i in range(args.requests)]
    counts = [int(r) for r in args.replicas.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    tps: dict[str, list[float]] = {}
    kill = {}
    for round_ in range(args.repeats):
        for replicas in counts if round_ % 2 == 0 else counts[::-1]:
            (port,) = free_ports(1)
            port = port - port % 10  # up uses port .. port + 3, replicas + 10 i
            proc = start_up(args.model, replicas, port, args.threads_per_replica)
            base = f"http://127.0.0.1:{port}"
            try:
                wait_healthy(base, proc)
                asyncio.run(run_mode(base, args.model, prompts[:2], 1, 8, None))  # warm-up
                for conc in concurrency:
                    r = asyncio.run(run_mode(base, args.model, prompts, conc, args.max_tokens, None))
                    tps.setdefault(f"{replicas} replicas, {conc} clients", []).append(r["throughput_tps"])
                    print(f"round {round_} replicas {replicas} clients {conc}: "
                          f"{r['throughput_tps']:.1f} tok/s, tau {r['mean_acceptance_length']:.2f}", flush=True)
                if args.kill and round_ == 0 and replicas == max(counts) > 1:
                    conc = max(concurrency)
                    ref = asyncio.run(greedy_texts(base, args.model, prompts[:conc], args.max_tokens, conc))
                    hit = asyncio.run(greedy_texts(base, args.model, prompts[:conc], args.max_tokens, conc,
                                                   kill_port=port + 2 + 10 * (replicas - 1)))
                    kill = {"streams": conc, "finished": sum(t is not None for t in hit["texts"]),
                            "errors": hit["errors"], "killed_after_s": hit["killed_after_s"],
                            "wall_s": hit["wall_s"], "wall_s_without_kill": ref["wall_s"],
                            "greedy_equal_to_unkilled": sum(a == b for a, b in zip(ref["texts"], hit["texts"]))}
                    print("kill test:", {k: v for k, v in kill.items() if k != "errors"}, flush=True)
            finally:
                stop_up(proc)
    medians = {k: statistics.median(v) for k, v in tps.items()}
    for conc in concurrency:
        one = medians.get(f"1 replicas, {conc} clients")
        for replicas in counts:
            key = f"{replicas} replicas, {conc} clients"
            print(f"{key}: {medians[key]:.1f} tok/s" + (f" ({medians[key] / one:.2f}x one replica)" if one else ""))
    out = {"meta": meta(model=args.model, requests=args.requests, max_tokens=args.max_tokens,
                        repeats=args.repeats, threads_per_replica=args.threads_per_replica,
                        prompts=args.prompts, load_before=load_before, load_after=os.getloadavg()),
           "throughput_tps": tps, "median_tps": medians, "kill_test": kill}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
