"""What splitting draft and target into gRPC services costs per step.

Starts ``specgrove target`` and ``specgrove draft`` as real processes on loopback and compares
their per-step time (one batched Propose + one batched Verify) with the same engines in this
process, at several batch sizes, plain decoding (root-only trees, the worst case for overhead:
the least compute per RPC) and n-gram speculation. Medians over steps; prompts from a JSONL file.

    python benchmarks/grpc_split.py --prompts ../shared/prompts/dev.jsonl --out results.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from draft_service.drafters.ngram import NgramDrafter
from draft_service.engine import DraftEngine
from specgrove.clients import DraftClient, TargetClient
from specgrove.modeling.loader import load_tokenizer, resolve_model
from specgrove.runner import KVCacheConfig, load_runner
from specgrove.types import PrefillRequest, ProposeRequest, TreeBudget, VerifyItem
from target_service.engine import TargetEngine

HERE = Path(__file__).parent
BUDGETS = {"plain": TreeBudget.off(), "ngram": TreeBudget(max_nodes=8, max_depth=6)}


def prompts_for(path: str, tok, batch: int) -> list[tuple[int, ...]]:
    rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    out = []
    for i in range(batch):
        text = tok.apply_chat_template([{"role": "user", "content": rows[i % len(rows)]["prompt"]}],
                                       add_generation_prompt=True, tokenize=False)
        out.append(tuple(tok.encode(text, add_special_tokens=False)))
    return out


def in_process_steps(target, drafts, prompts, budget, steps, base) -> list[float]:
    firsts = target.prefill([PrefillRequest(base + i, p) for i, p in enumerate(prompts)])
    for r, p in zip(firsts, prompts):
        drafts.prefill(r.seq_id, list(p) + [r.first_token])
    new = {r.seq_id: () for r in firsts}
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        props = drafts.propose([ProposeRequest(s, new[s], budget) for s in new])
        results = target.verify([VerifyItem(p.seq_id, p.tree) for p in props])
        new = {r.seq_id: r.new_tokens for r in results}
        times.append(time.perf_counter() - start)
    for s in new:
        target.release(s)
        drafts.release(s)
    return times


async def grpc_steps(t: TargetClient, d: DraftClient, prompts, budget, steps, base) -> list[float]:
    firsts = await t.prefill([PrefillRequest(base + i, p) for i, p in enumerate(prompts)])
    await d.prefill([(r.seq_id, list(p) + [r.first_token]) for r, p in zip(firsts, prompts)])
    new = {r.seq_id: () for r in firsts}
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        props = await d.propose([ProposeRequest(s, new[s], budget) for s in new])
        results = await t.verify([VerifyItem(p.seq_id, p.tree) for p in props])
        new = {r.seq_id: r.new_tokens for r in results}
        times.append(time.perf_counter() - start)
    await t.release(list(new))
    await d.release(list(new))
    return times


async def wait_serving(address: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{address} did not become healthy")


def start_services(model: str, tport: int, dport: int) -> list[subprocess.Popen]:
    exe = [sys.executable, "-m", "specgrove.cli"]
    env = dict(os.environ)
    return [
        subprocess.Popen(exe + ["target", "--target", model, "--port", str(tport)], env=env),
        subprocess.Popen(exe + ["draft", "--target-vocab-from", model, "--drafter", "ngram=ngram",
                                "--port", str(dport)], env=env),
    ]


async def measure_grpc(args, prompts_by_batch) -> dict:
    taddr, daddr = f"127.0.0.1:{args.target_port}", f"127.0.0.1:{args.draft_port}"
    await wait_serving(taddr)
    await wait_serving(daddr)
    out = {}
    async with TargetClient(taddr) as t, DraftClient(daddr) as d:
        for (batch, name), prompts in prompts_by_batch.items():
            base = 10_000 * batch + (0 if name == "plain" else 5000)
            await grpc_steps(t, d, prompts, BUDGETS[name], 3, base + 900)  # warm-up
            out[(batch, name)] = await grpc_steps(t, d, prompts, BUDGETS[name], args.steps, base)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--target-port", type=int, default=50151)
    ap.add_argument("--draft-port", type=int, default=50152)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    batches = [int(b) for b in args.batches.split(",")]
    work = {(b, n): prompts_for(args.prompts, tok, b) for b in batches for n in BUDGETS}
    procs = start_services(args.model, args.target_port, args.draft_port)
    try:
        remote = asyncio.run(measure_grpc(args, work))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    target = TargetEngine(load_runner(str(path), torch.float32, torch.device("cpu"), KVCacheConfig(16, 2048)))
    drafts = DraftEngine.of({"ngram": NgramDrafter()}, "ngram")
    rows = []
    for (batch, name), prompts in work.items():
        in_process_steps(target, drafts, prompts, BUDGETS[name], 3, 900_000)
        local = in_process_steps(target, drafts, prompts, BUDGETS[name], args.steps, 100_000 * batch)
        lm, rm = statistics.median(local) * 1e3, statistics.median(remote[(batch, name)]) * 1e3
        rows.append({"batch": batch, "mode": name, "in_process_ms": lm, "grpc_ms": rm,
                     "overhead_ms": rm - lm, "overhead_pct": 100 * (rm - lm) / lm})
        print(f"batch {batch:2d} {name:6s} in-process {lm:7.1f} ms  gRPC {rm:7.1f} ms  "
              f"split cost {rm - lm:+6.1f} ms ({100 * (rm - lm) / lm:+.1f}%)", flush=True)
    meta = {"machine": platform.platform(), "torch": torch.__version__, "model": args.model,
            "steps": args.steps, "prompts": args.prompts,
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
