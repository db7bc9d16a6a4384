"""Memory of the services under mixed traffic: RSS of the draft and target processes of
`specgrove up` over N mixed requests, and what is left held afterwards.

The traffic mixes what users and bad clients send, at a fixed concurrency: greedy and seeded
completions and chats, explicit speculation settings, streams (half of them dropped after two
chunks), and bodies that must be refused (400). After the run, the draft service must hold no
sequence and the target no KV block, and RSS should have levelled off rather than grown with
the request count.

    python benchmarks/service_memory.py --requests 1000 --out benchmarks/results/service-memory.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import child_pid, meta  # noqa: E402
from benchmarks.serve import wait_healthy  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing "
         "matches in the old town square near the river bank at dawn").split()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def body(rng: random.Random, model: str) -> tuple[str, dict, bool]:
    """One request of the mix: (path, JSON body, stream and drop it early)."""
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 300)))
    kind = rng.random()
    if kind < 0.35:
        return "/v1/completions", {"model": model, "prompt": text, "max_tokens": rng.randint(4, 24),
                                   "temperature": 0}, False
    if kind < 0.55:
        return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}],
                                        "max_tokens": rng.randint(4, 24), "temperature": 0.8,
                                        "seed": rng.randint(0, 1 << 30)}, False
    if kind < 0.65:
        spec = rng.choice([{"drafter": "lookup", "tree": "4,2"}, {"drafter": "none"},
                           {"tree": {"nodes": 6, "depth": 3}}])
        return "/v1/completions", {"model": model, "prompt": text + " " + text, "max_tokens": 16,
                                   "temperature": 0, "speculation": spec}, False
    if kind < 0.85:
        return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": text}],
                                        "max_tokens": 24, "stream": True}, rng.random() < 0.5
    bad = rng.choice([{"temperature": -1}, {"top_p": 0}, {"max_tokens": -5}, {"top_k": 3_000_000_000},
                      {"speculation": {"tree": "9" * 30}}, {"n": "many"}])
    return "/v1/completions", {"model": model, "prompt": text, **bad}, False


async def send(client: httpx.AsyncClient, path: str, payload: dict, drop: bool) -> int:
    if not payload.get("stream"):
        return (await client.post(path, json=payload)).status_code
    async with client.stream("POST", path, json=payload) as resp:
        chunks = 0
        async for _ in resp.aiter_lines():
            chunks += 1
            if drop and chunks >= 2:
                break  # the client goes away mid-stream
        return resp.status_code


async def traffic(base: str, model: str, n: int, concurrency: int, sample_every: int,
                  pids: dict[str, int], seed: int) -> tuple[list[dict], dict[int, int]]:
    rng = random.Random(seed)
    jobs = [body(rng, model) for _ in range(n)]
    statuses: dict[int, int] = {}
    samples = [{"requests": 0, **{k: round(rss_mb(p), 1) for k, p in pids.items()}}]
    queue: asyncio.Queue = asyncio.Queue()
    for i, job in enumerate(jobs):
        queue.put_nowait((i, job))
    done = 0

    async def worker(client):
        nonlocal done
        while not queue.empty():
            _, (path, payload, drop) = queue.get_nowait()
            try:
                code = await send(client, path, payload, drop)
            except httpx.HTTPError:
                code = -1
            statuses[code] = statuses.get(code, 0) + 1
            done += 1
            if done % sample_every == 0:
                samples.append({"requests": done, **{k: round(rss_mb(p), 1) for k, p in pids.items()}})

    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return samples, statuses


async def held(draft: str, target: str, token: str) -> dict:
    """Sequences the draft service holds; sequences and free blocks in the target."""
    from specgrove.clients import DraftClient, TargetClient

    async with DraftClient(draft, token=token) as d, TargetClient(target, token=token) as t:
        dinfo, tinfo = await d.info(), await t.info()
    return {"draft_sequences": dinfo.num_sequences, "target_free_blocks": tinfo.free_blocks,
            "target_total_blocks": tinfo.total_blocks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sample-every", type=int, default=100)
    ap.add_argument("--port", type=int, default=8310)
    ap.add_argument("--drafter", default="lookup=ngram", help="up's --drafter (the probe used n-gram only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    p = args.port
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "SPECGROVE_SERVICE_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "specgrove.cli", "up", "--port", str(p),
                             "--grpc-port", str(p + 1), "--target-port", str(p + 2),
                             "--draft-port", str(p + 3), "--drafter", args.drafter], env=env)
    base = f"http://127.0.0.1:{p}"
    try:
        wait_healthy(base, proc)
        model = httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["id"]
        pids = {"draft_rss_mb": child_pid(proc.pid, "draft"), "target_rss_mb": child_pid(proc.pid, "target")}
        started = time.monotonic()
        samples, statuses = asyncio.run(traffic(base, model, args.requests, args.concurrency,
                                                args.sample_every, pids, args.seed))
        time.sleep(1.0)  # dropped streams are released at the next step
        after = asyncio.run(held(f"127.0.0.1:{p + 3}", f"127.0.0.1:{p + 2}", token))
        result = {"samples": samples, "statuses": {str(k): v for k, v in sorted(statuses.items())},
                  "held_after": after, "seconds": round(time.monotonic() - started, 1)}
    finally:
        proc.terminate()
        proc.wait(120)
    print(json.dumps(result, indent=1))
    if args.out:
        info = meta(requests=args.requests, concurrency=args.concurrency, drafter=args.drafter, seed=args.seed)
        Path(args.out).write_text(json.dumps({"meta": info, **result}, indent=2))


if __name__ == "__main__":
    main()
