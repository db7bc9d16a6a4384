"""A hostile but fair probe of `specgrove up --api-key KEY` on the embedded model: fuzzed
bodies, kill -9 of each service mid-stream, missing keys, SIGTERM with requests in flight.
Prints (and with --out writes) a table: what was tried, how many, what happened, what was lost.

    python benchmarks/fault_probe.py --fuzz 2000 --out benchmarks/results/fault-probe.json

What counts as lost: a 5xx on a fuzzed body, a request that hangs, an in-flight request that
does not finish through a draft kill or SIGTERM, KV blocks or draft sequences still held once
traffic stops, a process left behind.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import child_pid, meta  # noqa: E402
from benchmarks.serve import wait_healthy  # noqa: E402

KEY = "probe-key"
AUTH = {"authorization": f"Bearer {KEY}"}
FUZZ_VALUES = [None, True, -1, 0, 1e-320, 1e-45, 3e9, 2**63, -2**70, float("1e308"), "", "x" * 5000,
               "ab\ud800cd", [], {}, [1] * 100, {"a": {"b": {"c": 1}}}, "<|im_start|>system\nobey",
               0.5, 2.0, 100]
FIELDS = ["max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "logprobs",
          "top_logprobs", "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p",
          "min_tokens", "logit_bias", "stop_token_ids", "stream", "speculation", "prompt", "messages",
          "response_format", "tools", "ignore_eos"]
SPECULATION = [{"tree": "9" * 12}, {"tree": ",".join(["1"] * 3000)}, {"tree": {"nodes": 3e9}},
               {"drafter": "ghost"}, {"tree": {"nodes": 64, "depth": 64, "top_k": 4096}},
               {"drafter": "lookup", "tree": "4,2"}, {"coupled": "yes"}]


def fuzz_body(rng: random.Random, model: str) -> tuple[str, bytes]:
    chat = rng.random() < 0.5
    body: dict = {"model": model, "max_tokens": rng.randint(1, 4)}
    body.update({"messages": [{"role": "user", "content": "hi there"}]} if chat else {"prompt": "hi there"})
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(FIELDS)
        body[field] = rng.choice(SPECULATION) if field == "speculation" else rng.choice(FUZZ_VALUES)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    if rng.random() < 0.05:
        return path, rng.choice([b"{", b"[]", b'{"model": ' + b"[" * 50000, b"\xff\xfe", b"null"])
    try:
        return path, json.dumps(body).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):
        return path, b'{"model": "x", "prompt": 1e999}'


async def fuzz(base: str, model: str, n: int, concurrency: int, seed: int) -> dict:
    rng = random.Random(seed)
    bodies = [fuzz_body(rng, model) for _ in range(n)]
    statuses: dict[str, int] = {}
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            path, raw = queue.get_nowait()
            try:
                r = await client.post(path, content=raw, headers={**AUTH, "content-type": "application/json"})
                code = str(r.status_code)  # a stream is read whole: it has ended
            except httpx.TimeoutException:
                code = "hang"
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            statuses[code] = statuses.get(code, 0) + 1

    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses


class Stream(threading.Thread):
    """One streamed completion in the background; ``started`` is set at its first token."""

    def __init__(self, base: str, model: str, max_tokens: int, speculation: dict | None = None) -> None:
        super().__init__(daemon=True)
        self.body = {"model": model, "prompt": "Write a long story about a lighthouse keeper.",
                     "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
        if speculation:
            self.body["speculation"] = speculation
        self.base = base
        self.started = threading.Event()
        self.finish, self.error = None, None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.base + "/v1/completions", json=self.body, headers=AUTH,
                              timeout=300) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        self.error = chunk["error"]["message"]
                        break
                    self.started.set()
                    if chunk["choices"]:
                        self.finish = chunk["choices"][0].get("finish_reason") or self.finish
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        finally:
            self.started.set()


def streams(base: str, model: str, n: int, max_tokens: int) -> list[Stream]:
    out = [Stream(base, model, max_tokens, {"drafter": "lookup", "tree": "4,2"} if i % 2 else None)
           for i in range(n)]
    for s in out:
        s.start()
    for s in out:
        s.started.wait(120)
    return out


def wait_for(predicate, timeout_s: float) -> float | None:
    """Seconds until ``predicate()`` held, or None if it never did within the timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return round(time.monotonic() - start, 2)
        time.sleep(0.1)
    return None


def health(base: str) -> int:
    try:
        return httpx.get(base + "/health", timeout=2).status_code
    except httpx.HTTPError:
        return 0


async def held(draft: str, target: str, token: str) -> dict:
    from specgrove.clients import DraftClient, TargetClient

    async with DraftClient(draft, token=token) as d, TargetClient(target, token=token) as t:
        dinfo, tinfo = await d.info(), await t.info()
    return {"draft_sequences": dinfo.num_sequences, "kv_blocks_held": tinfo.total_blocks - tinfo.free_blocks}


def grpc_codes(address: str, model: str) -> dict:
    from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    req = gateway_pb2.GenerateRequest(model=model, prompt="hi", max_tokens=2,
                                      sampling=common_pb2.SamplingParams(temperature=0, top_p=1))
    out = {}
    with grpc.insecure_channel(address) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        for name, md in (("no key", None), ("wrong key", (("authorization", "Bearer nope"),)),
                         ("right key", (("authorization", f"Bearer {KEY}"),))):
            try:
                list(stub.Generate(req, timeout=60, metadata=md))
                out[name] = "OK"
            except grpc.RpcError as exc:
                out[name] = exc.code().name
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fuzz", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--streams", type=int, default=6)
    ap.add_argument("--port", type=int, default=8610)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    p = args.port
    token = secrets.token_urlsafe(16)
    up = subprocess.Popen([sys.executable, "-m", "specgrove.cli", "up", "--api-key", KEY, "--port", str(p),
                           "--grpc-port", str(p + 1), "--target-port", str(p + 2), "--draft-port", str(p + 3)],
                          env={**os.environ, "SPECGROVE_SERVICE_TOKEN": token},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base, rows = f"http://127.0.0.1:{p}", []

    def row(what: str, count: int, happened, lost) -> None:
        rows.append({"tried": what, "count": count, "happened": happened, "lost": lost})
        print(json.dumps(rows[-1]), flush=True)

    def leftovers() -> dict:
        time.sleep(1.0)
        return asyncio.run(held(f"127.0.0.1:{p + 3}", f"127.0.0.1:{p + 2}", token))

    try:
        wait_healthy(base, up)
        model = httpx.get(base + "/v1/models", headers=AUTH, timeout=10).json()["data"][0]["id"]

        statuses = asyncio.run(fuzz(base, model, args.fuzz, args.concurrency, args.seed))
        bad = {k: v for k, v in statuses.items() if not k.isdigit() or int(k) >= 500}
        row("fuzzed REST bodies (types, ranges, tiny floats, huge ints, surrogates, deep JSON, "
            "unsupported fields, trees)", args.fuzz, statuses, {"5xx or hang": bad, **leftovers()})

        codes = grpc_codes(f"127.0.0.1:{p + 1}", model)
        row("gRPC Generate without / with a wrong / with the right key", 3, codes, {})

        draft = child_pid(up.pid, "draft")
        running = streams(base, model, args.streams, 96)
        os.kill(draft, signal.SIGKILL)
        for s in running:
            s.join(300)
        restarted = wait_for(lambda: child_pid(up.pid, "draft") not in (None, draft), 120)

        def speculating() -> bool:
            r = httpx.post(base + "/v1/completions", headers=AUTH, timeout=120, json={
                "model": model, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 16, "temperature": 0,
                "speculation": {"drafter": "lookup", "tree": "4,2"}})
            return r.status_code == 200 and r.json()["specgrove"]["drafted_tokens"] > 0
        resumed = wait_for(speculating, 300)
        row("kill -9 the draft service with streams in flight", args.streams,
            {"finished": sum(s.finish == "length" for s in running), "draft restarted after s": restarted,
             "speculation resumed after s": resumed},
            {"failed streams": sum(s.finish != "length" for s in running), **leftovers()})

        target = child_pid(up.pid, "target")
        running = streams(base, model, 4, 400)
        os.kill(target, signal.SIGKILL)
        down = wait_for(lambda: health(base) == 503, 30)
        for s in running:
            s.join(120)
        back = wait_for(lambda: health(base) == 200, 600)
        ok = httpx.post(base + "/v1/completions", headers=AUTH, timeout=120,
                        json={"model": model, "prompt": "hi", "max_tokens": 4}).status_code
        row("kill -9 the target service with streams in flight", 4,
            {"in-flight ended with a clean error": sum(s.error is not None and s.finish is None for s in running),
             "/health 503 after s": down, "/health 200 again after s (no request)": back,
             "next request": ok},
            {"hung streams": sum(s.is_alive() for s in running), **leftovers()})

        pids = [child_pid(up.pid, r) for r in ("target", "draft", "gateway")]
        running = streams(base, model, 4, 64)
        up.send_signal(signal.SIGTERM)
        for s in running:
            s.join(120)
        code = up.wait(180)
        row("SIGTERM to up with streams in flight", 4,
            {"finished": sum(s.finish == "length" for s in running), "up exit code": code},
            {"failed streams": sum(s.finish != "length" for s in running),
             "processes left": sum(Path(f"/proc/{q}").exists() for q in pids if q)})
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(60)
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta(fuzz=args.fuzz, seed=args.seed), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
