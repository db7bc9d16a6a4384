"""What the step loop and the split into gRPC services cost per step.

Three ways to run the same decoding, medians of per-step times, same prompts and batch:

* ``engine``: the engines called directly (propose then verify, nothing else): the floor;
* ``in-process``: the gateway's orchestrator over the in-process ports (engine threads);
* ``gRPC``: the same orchestrator over the gRPC clients of ``specgrove target`` /
  ``specgrove draft`` started as real processes on loopback.

Plain decoding (root-only trees: the least compute per call, the worst case for overhead) and
n-gram speculation, at several batch sizes.

    python benchmarks/grpc_split.py --prompts ../shared/prompts/dev.jsonl --out results.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: benchmarks.common
from benchmarks.common import HERE, chat_ids, load_prompts, local_ports, meta, step_clock
from gateway.job import JobSpec
from gateway.offline import complete
from specgrove.clients import DraftClient, TargetClient
from specgrove.tree import TokenTree
from specgrove.sampling_params import SamplingParams
from specgrove.types import PrefillRequest, ProposeRequest, TreeBudget, VerifyItem

BUDGETS = {"plain": TreeBudget.off(), "ngram": TreeBudget(max_nodes=8, max_depth=6)}


def engine_steps(target, draft, prompts, budget: TreeBudget, steps: int) -> list[float]:
    """The floor: Propose + Verify on the engines themselves, timed per step."""
    eng, drafts = target.engine, draft.engine
    firsts = eng.prefill([PrefillRequest(900_000 + i, tuple(p)) for i, p in enumerate(prompts)])
    for r, p in zip(firsts, prompts):
        drafts.prefill(r.seq_id, tuple(p) + (r.first_token,))
    new = {r.seq_id: () for r in firsts}
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        props = drafts.propose([ProposeRequest(s, new[s], budget, "ngram") for s in new])
        results = eng.verify([VerifyItem(p.seq_id, p.tree) for p in props])
        new = {r.seq_id: r.new_tokens for r in results}
        times.append(time.perf_counter() - start)
    for s in new:
        eng.release(s)
        drafts.release(s)
    return times


async def loop_steps(target, draft, prompts, budget: TreeBudget, steps: int) -> list[float]:
    """The orchestrator's step durations over these ports (one batch, ``steps`` tokens each)."""
    specs = [JobSpec(tuple(p), steps + 1, SamplingParams(), drafter="ngram", budget=budget,
                     ignore_eos=True) for p in prompts]
    metrics = step_clock()
    outs = await complete(target, draft, specs, metrics=metrics)
    assert all(o.error is None for o in outs), [o.error for o in outs]
    return metrics.step_samples


async def feature_cost(t: TargetClient, prompts, steps: int, layers=(2, 15, 29)) -> dict:
    """Per Verify of plain decoding over gRPC: time and response bytes with the target
    returning features at ``layers`` for every sequence (what an EAGLE drafter needs) and
    without. Direct client calls: the cost of the payload, nothing else."""
    out = {}
    for name, asked in (("without", ()), ("with", tuple(layers))):
        base = 700_000 if asked else 600_000
        firsts = await t.prefill([PrefillRequest(base + i, tuple(p), feature_layers=asked)
                                  for i, p in enumerate(prompts)])
        pending = {r.seq_id: r.first_token for r in firsts}
        times, sizes = [], []
        for _ in range(steps):
            items = [VerifyItem(s, TokenTree.root_only(tok)) for s, tok in pending.items()]
            start = time.perf_counter()
            results = await t.verify(items)
            times.append(time.perf_counter() - start)
            sizes.append(sum(len(r.to_pb().SerializeToString()) for r in results))
            pending = {r.seq_id: r.bonus_token for r in results}
        await t.release(list(pending))
        out[name] = {"verify_ms": 1e3 * statistics.median(times[2:]), "bytes": statistics.median(sizes)}
    return out


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


def start_services(model: str, dtype: str, tport: int, dport: int) -> list[subprocess.Popen]:
    exe = [sys.executable, "-m", "specgrove.cli"]
    return [
        subprocess.Popen(exe + ["target", "--target", model, "--port", str(tport), "--dtype", dtype]),
        subprocess.Popen(exe + ["draft", "--target-vocab-from", model, "--drafter", "ngram=ngram",
                                "--port", str(dport)]),
    ]


async def measure_grpc(args, work: dict) -> dict:
    taddr, daddr = f"127.0.0.1:{args.target_port}", f"127.0.0.1:{args.draft_port}"
    await wait_serving(taddr)
    await wait_serving(daddr)
    out = {}
    async with TargetClient(taddr) as t, DraftClient(daddr) as d:
        for (batch, name), prompts in work.items():
            await loop_steps(t, d, prompts, BUDGETS[name], 3)  # warm-up
            out[(batch, name)] = await loop_steps(t, d, prompts, BUDGETS[name], args.steps)
        for batch in sorted({b for b, _ in work}):
            out[(batch, "features")] = await feature_cost(t, work[(batch, "plain")], args.steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--target-port", type=int, default=50151)
    ap.add_argument("--draft-port", type=int, default=50152)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    target, draft, codec = local_ports(args.model, args.dtype, kv_blocks=2048)
    rows_in = load_prompts(args.prompts)
    batches = [int(b) for b in args.batches.split(",")]
    work = {(b, n): [chat_ids(codec, rows_in[i % len(rows_in)]["prompt"]) for i in range(b)]
            for b in batches for n in BUDGETS}
    procs = start_services(args.model, args.dtype, args.target_port, args.draft_port)
    try:
        remote = asyncio.run(measure_grpc(args, work))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    rows = []
    for batch in batches:
        f = remote[(batch, "features")]
        rows.append({"batch": batch, "mode": "features (3 layers) over gRPC", **{
            f"{k}_{m}": v for k, r in f.items() for m, v in r.items()}})
        print(f"batch {batch:2d} verify over gRPC without features {f['without']['verify_ms']:6.1f} ms "
              f"({f['without']['bytes']:.0f} B), with {f['with']['verify_ms']:6.1f} ms ({f['with']['bytes']:.0f} B)",
              flush=True)
    for (batch, name), prompts in work.items():
        budget = BUDGETS[name]
        engine_steps(target, draft, prompts, budget, 3)  # warm-up
        em = statistics.median(engine_steps(target, draft, prompts, budget, args.steps)) * 1e3
        lm = statistics.median(asyncio.run(loop_steps(target, draft, prompts, budget, args.steps))) * 1e3
        rm = statistics.median(remote[(batch, name)]) * 1e3
        rows.append({"batch": batch, "mode": name, "engine_ms": em, "in_process_ms": lm, "grpc_ms": rm,
                     "loop_overhead_pct": 100 * (lm - em) / em, "split_overhead_pct": 100 * (rm - lm) / lm})
        print(f"batch {batch:2d} {name:6s} engine {em:6.1f} ms  in-process loop {lm:6.1f} ms "
              f"({100 * (lm - em) / em:+.1f}%)  gRPC {rm:6.1f} ms ({100 * (rm - lm) / lm:+.1f}% split)",
              flush=True)
    if args.out:
        info = meta(model=args.model, dtype=args.dtype, steps=args.steps, prompts=args.prompts)
        Path(args.out).write_text(json.dumps({"meta": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
