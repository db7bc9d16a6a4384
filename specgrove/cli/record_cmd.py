"""``specgrove record``: send a prompt file through a running gateway and store, per request,
everything an exact offline replay needs (``specgrove.cli.recordfile``).

Per prompt row: the prompt's token ids from REST ``POST /tokenize`` (the same encoding, chat
template included, that generation uses; checked against the usage the gateway reports), then a
gRPC ``Generate`` stream, whose messages carry the emitted token ids (one message per verify
step, so the live accepted count of every step comes along) and, on the last, the seed the
request sampled under. Outputs are fixed by (prompt, seed) -- greedy or position-keyed
sampling -- so recording with any concurrency or speculation gives the same tokens.

No torch and no service package: this is a client.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx

from specgrove.cli.recordfile import LiveStats, Record, tree_json, write_record
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget


@dataclass(frozen=True)
class RecordOptions:
    url: str
    grpc_address: str | None
    api_key: str | None
    prompts: str
    out: str
    model: str | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    chat: bool
    drafter: str | None
    tree: str | None
    concurrency: int
    limit: int | None


class RecordError(RuntimeError):
    """A prompt that could not be recorded (named in the message)."""


def grpc_address_of(url: str, given: str | None) -> str:
    """The gateway's gRPC address: the one given, or the REST URL's host on ``up``'s 50050."""
    if given:
        return given
    return f"{urlparse(url).hostname or '127.0.0.1'}:50050"


@dataclass(frozen=True)
class _Gateway:
    """The two front doors of one gateway, and how to address it."""

    url: str
    stub: object  # gateway_pb2_grpc.GatewayStub
    http: httpx.AsyncClient
    model: str
    metadata: tuple

    async def tokenize(self, row: dict, messages: list[dict] | None) -> tuple[list[int], int]:
        body = {"model": self.model, **({"messages": messages} if messages else {"prompt": row["prompt"]})}
        r = await self.http.post(self.url + "/tokenize", json=body)
        if r.status_code != 200:
            raise RecordError(f"{row['id']}: /tokenize: HTTP {r.status_code}: {r.text[:300]}")
        got = r.json()
        return got["tokens"], got["max_model_len"]


def _generate_request(row: dict, messages: list[dict] | None, seed: int | None, opts: RecordOptions, model: str):
    from specgrove.pb.v1 import common_pb2, gateway_pb2

    # Every field that shapes p is set explicitly: unset gRPC sampling fields take REST's
    # defaults (temperature 1), and the record must say exactly what was sampled.
    sampling = common_pb2.SamplingParams(temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k)
    if seed is not None:
        sampling.seed = seed
    req = gateway_pb2.GenerateRequest(model=model, max_tokens=opts.max_tokens, sampling=sampling,
                                      request_id=f"record-{row['id']}")
    if messages:
        req.messages.CopyFrom(gateway_pb2.ChatMessages(
            messages=[gateway_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages]))
    else:
        req.prompt = row["prompt"]
    if opts.drafter == "none":
        req.speculation.CopyFrom(gateway_pb2.Speculation(off=True))
    elif opts.drafter or opts.tree:
        req.speculation.CopyFrom(gateway_pb2.Speculation(drafter=opts.drafter or "", tree_spec=opts.tree or ""))
    return req


async def _record_one(gw: _Gateway, row: dict, index: int, opts: RecordOptions) -> Record:
    messages = row.get("messages") or ([{"role": "user", "content": row["prompt"]}] if opts.chat else None)
    prompt_ids, max_model_len = await gw.tokenize(row, messages)
    seed = opts.seed + index if opts.seed is not None else None  # distinct per prompt, reproducible
    req = _generate_request(row, messages, seed, opts, gw.model)
    import grpc

    chunks: list[tuple[int, int]] = []  # (tokens, accepted) per message that carried tokens
    output: list[int] = []
    last = None
    started = time.perf_counter()
    try:
        async for msg in gw.stub.Generate(req, timeout=3600, metadata=gw.metadata):
            if msg.error:
                raise RecordError(f"{row['id']}: the gateway ended the stream: {msg.error}")
            if msg.token_ids:
                output.extend(msg.token_ids)
                chunks.append((len(msg.token_ids), msg.accepted_tokens))
            if msg.finish_reason:
                last = msg
    except grpc.aio.AioRpcError as exc:
        raise RecordError(f"{row['id']}: Generate: {exc.code().name}: {exc.details()}") from None
    seconds = time.perf_counter() - started
    if last is None:
        raise RecordError(f"{row['id']}: the stream ended without a finish reason")
    if last.usage.prompt_tokens != len(prompt_ids):  # /tokenize and Generate must agree
        raise RecordError(f"{row['id']}: /tokenize gave {len(prompt_ids)} prompt tokens, Generate used "
                          f"{last.usage.prompt_tokens}")
    return Record(str(row["id"]), str(row.get("category", "all")), gw.model, tuple(prompt_ids), tuple(output),
                  last.finish_reason, opts.max_tokens, max_model_len,
                  SamplingParams(opts.temperature, opts.top_p, opts.top_k, last.seed),
                  live=_live_stats(last, chunks, opts, seconds))


def _live_stats(last, chunks: list[tuple[int, int]], opts: RecordOptions, seconds: float) -> LiveStats:
    sp = last.speculation
    eff = last.effective
    tree = tree_json(TreeBudget.from_pb(eff.tree)) if eff.HasField("tree") else None
    # The first message is the prefill's token; each later one is one verify step.
    steps = chunks[1:]
    step_accepted = tuple(a for _, a in steps) if len(steps) == sp.steps else None
    return LiveStats(eff.drafter, tree, adaptive=opts.drafter is None and opts.tree is None, coupled=True,
                     steps=sp.steps, drafted_tokens=sp.drafted_tokens, accepted_tokens=sp.accepted_tokens,
                     mean_acceptance_length=sp.mean_acceptance_length, step_accepted=step_accepted,
                     max_batch_size=sp.max_batch_size, seconds=seconds)


async def _default_model(http: httpx.AsyncClient, url: str) -> str:
    r = await http.get(url + "/v1/models")
    if r.status_code != 200:
        raise RecordError(f"GET /v1/models: HTTP {r.status_code}: {r.text[:300]}")
    return r.json()["data"][0]["id"]


async def record_all(opts: RecordOptions, rows: list[dict], progress=None) -> dict:
    """Record every row into ``opts.out``; returns a summary (counts, failures, wall time)."""
    from specgrove.clients import open_channel
    from specgrove.pb.v1 import gateway_pb2_grpc

    url = opts.url.rstrip("/")
    headers = {"authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    metadata = (("authorization", f"Bearer {opts.api_key}"),) if opts.api_key else ()
    failures: list[str] = []
    done = 0
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, headers=headers) as http, \
            open_channel(grpc_address_of(url, opts.grpc_address)) as channel:
        model = opts.model or await _default_model(http, url)
        gw = _Gateway(url, gateway_pb2_grpc.GatewayStub(channel), http, model, metadata)
        queue: asyncio.Queue = asyncio.Queue()
        for item in enumerate(rows):
            queue.put_nowait(item)
        with open(opts.out, "w") as f:
            async def worker() -> None:
                nonlocal done
                while not queue.empty():
                    index, row = queue.get_nowait()
                    try:
                        write_record(f, await _record_one(gw, row, index, opts))
                        done += 1
                    except RecordError as exc:
                        failures.append(str(exc))
                    if progress is not None:
                        progress.update(1)

            await asyncio.gather(*(worker() for _ in range(max(1, opts.concurrency))))
    return {"recorded": done, "failed": failures, "out": opts.out, "model": model,
            "seconds": time.perf_counter() - started}


def run_record(opts: RecordOptions) -> dict:
    from tqdm import tqdm

    from specgrove.cli.bench_run import load_prompts

    if opts.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {opts.max_tokens}")
    rows = load_prompts(opts.prompts)
    rows = rows[:opts.limit] if opts.limit else rows
    with tqdm(total=len(rows), desc="record", unit="req", leave=False) as bar:
        return asyncio.run(record_all(opts, rows, bar))
