"""What tracing costs per step: tracing off vs on (file exporter), through real processes.

Starts ``specgrove up`` (target, draft and gateway as three processes on loopback) once per
configuration and repeat, sends rounds of concurrent greedy chat completions at each batch size
and measures

* the gateway's step time: the change of ``specgrove:step_duration_seconds`` (sum / count) on
  ``/metrics`` over the rounds -- one Propose + one Verify + the gateway's bookkeeping;
* the client's view: the rounds' wall time over the steps of each round's longest request.

Configurations alternate (off, file, off, file, ...) ``--repeats`` times and medians are
reported. ``--baseline-repo DIR`` adds a checkout without tracing (e.g. ``git archive HEAD``
of the commit before it, unpacked), measured from the client only, to compare "off" with code
that has no instrumentation at all. Last, a micro-benchmark times the instrumentation a step
runs with tracing off in this process: the no-op spans alone, and with the metric updates.

    python benchmarks/tracing_overhead.py --model smollm2-135m-instruct --batches 1,8 \\
        --out benchmarks/results/tracing_overhead_smollm2_cpu.json
    python benchmarks/tracing_overhead.py --model tiny --rounds 4 --max-tokens 48 \\
        --out benchmarks/results/tracing_overhead_tiny_cpu.json

``--model tiny`` is the tests' 2-layer random model: steps of a few milliseconds, where the
cost of tracing shows most.
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
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx

from specgrove.service import free_ports

HERE = Path(__file__).parent
ROOT = HERE.parent


def start_up(model: str, trace_file: str | None, repo: Path) -> tuple[subprocess.Popen, str]:
    http, grpc_port, tport, dport = free_ports(4)
    cmd = [sys.executable, "-m", "specgrove.cli", "up", "--target", model, "--port", str(http),
           "--grpc-port", str(grpc_port), "--target-port", str(tport), "--draft-port", str(dport)]
    if trace_file:
        cmd += ["--trace-file", trace_file]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(repo)  # the checkout under test, not the installed package
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"specgrove up exited with {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("specgrove up did not become healthy")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def step_metric(base: str) -> tuple[float, float] | None:
    text = httpx.get(base + "/metrics", timeout=10)
    if text.status_code != 200:
        return None  # a checkout without /metrics
    vals = {}
    for line in text.text.splitlines():
        if line.startswith("specgrove:step_duration_seconds_sum") or \
                line.startswith("specgrove:step_duration_seconds_count"):
            name, value = line.rsplit(" ", 1)
            vals[name.rsplit("_", 1)[1]] = float(value)
    return (vals["sum"], vals["count"]) if vals else None


async def one_round(client: httpx.AsyncClient, base: str, model: str, prompts: list[str],
                    max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    calls = [client.post(base + "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
        "temperature": 0}) for p in prompts]
    outs = [r.json() for r in await asyncio.gather(*calls)]
    return time.perf_counter() - start, max(o["specgrove"]["steps"] for o in outs)


async def measure(base: str, prompts: list[str], batch: int, rounds: int, max_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        model = (await client.get(base + "/v1/models")).json()["data"][0]["id"]
        chosen = [prompts[i % len(prompts)] for i in range(batch)]
        await one_round(client, base, model, chosen, 8)  # warm-up
        before = step_metric(base)
        wall = steps = 0
        for r in range(rounds):
            chosen = [prompts[(r * batch + i) % len(prompts)] for i in range(batch)]
            w, s = await one_round(client, base, model, chosen, max_tokens)
            wall, steps = wall + w, steps + s
        after = step_metric(base)
    out = {"client_ms_per_step": 1e3 * wall / steps}
    if before and after and after[1] > before[1]:
        out["gateway_ms_per_step"] = 1e3 * (after[0] - before[0]) / (after[1] - before[1])
        out["gateway_steps"] = after[1] - before[1]
    return out


def run_config(name: str, args, prompts: list[str], repo: Path, tmp: str) -> dict[int, dict]:
    trace = os.path.join(tmp, f"{name}-{time.monotonic_ns()}.jsonl") if name == "file" else None
    proc, base = start_up(args.model, trace, repo)
    try:
        res = {b: asyncio.run(measure(base, prompts, b, args.rounds, args.max_tokens))
               for b in args.batch_list}
    finally:
        stop(proc)  # SIGTERM: the services flush their spans before exiting
    if trace:
        size = os.path.getsize(trace)
        steps = sum(r.get("gateway_steps", 0) for r in res.values()) or 1
        for r in res.values():
            r["trace_bytes_per_step_all_services"] = size / steps
        os.remove(trace)
    return res


class _NoMetrics:
    """Stands in for GatewayMetrics to time the tracing hooks alone."""

    def __init__(self) -> None:
        self.step_time = SimpleNamespace(observe=lambda v: None)

    def step_item(self, *args) -> None:
        pass


def off_path_us(batch: int, with_metrics: bool, n: int = 20_000) -> float:
    """Microseconds per step of the instrumentation a step runs with tracing off: the no-op
    spans and observer hooks, plus (``with_metrics``) the Prometheus updates."""
    sys.path.insert(0, str(ROOT))
    from gateway.metrics import GatewayMetrics
    from gateway.observe import Observer
    from specgrove import telemetry
    from specgrove.tree import TokenTree
    from specgrove.types import VerifyResult

    obs = Observer(None, GatewayMetrics() if with_metrics else _NoMetrics(), "m")
    jobs = [SimpleNamespace(span=None, stats=SimpleNamespace(steps=1)) for _ in range(batch)]
    tree, res = TokenTree.chain([1, 2, 3, 4]), VerifyResult(0, (2, 3), 9)
    start = time.perf_counter()
    for _ in range(n):
        with obs.step(jobs) as span:
            for job in jobs:
                obs.step_item(span, job, tree, "lookup", res)
            obs.step_done(span, [tree] * batch, ["lookup"] * batch, [res] * batch, 10, 100)
            for name in ("draft.propose", "draft.expand", "target.forward", "target.accept",
                         "target.commit"):  # the engines' spans: no-op contexts
                with telemetry.span(name):
                    pass
            telemetry.recording_span()
            telemetry.recording_span()
    return 1e6 * (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a model name or path, or tiny")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-repo", default=None, help="a checkout without tracing, for comparison")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.batch_list = [int(b) for b in args.batches.split(",")]
    prompts = [json.loads(l)["prompt"] for l in Path(args.prompts).read_text().splitlines() if l.strip()]
    configs = [("off", ROOT), ("file", ROOT)]
    if args.baseline_repo:
        configs.insert(0, ("baseline", Path(args.baseline_repo).resolve()))
    runs: dict[str, list[dict[int, dict]]] = {name: [] for name, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            sys.path.insert(0, str(ROOT))
            from tests.tiny_models import save_tiny_model

            args.model = str(save_tiny_model(Path(tmp) / "tiny", "llama", seed=0))
        for rep in range(args.repeats):
            for name, repo in configs:
                runs[name].append(run_config(name, args, prompts, repo, tmp))
                print(f"repeat {rep + 1} {name}: {runs[name][-1]}", flush=True)
    rows = []
    for b in args.batch_list:
        row = {"batch": b}
        for name, _ in configs:
            for key in runs[name][0][b]:
                row[f"{name}_{key}"] = statistics.median(r[b][key] for r in runs[name])
        row["off_tracing_hooks_us_per_step"] = off_path_us(b, with_metrics=False)
        row["off_hooks_and_metrics_us_per_step"] = off_path_us(b, with_metrics=True)
        if "file_gateway_ms_per_step" in row and "off_gateway_ms_per_step" in row:
            d = row["file_gateway_ms_per_step"] - row["off_gateway_ms_per_step"]
            row["tracing_cost_ms_per_step"] = d
            row["tracing_cost_pct"] = 100 * d / row["off_gateway_ms_per_step"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "model": args.model,
            "rounds": args.rounds, "max_tokens": args.max_tokens, "repeats": args.repeats,
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip()}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
