"""``specgrove bench``'s measurements: one workload, several speculation settings, through a
real gateway.

Each run sends every prompt once, streamed, from ``concurrency`` clients, under one setting
(the request's ``speculation`` field), and records per request the time to the first token,
the time per later token, the tokens and the speculation stats of the last chunk. Acceptance by
draft position comes from the gateway's own counters (``/metrics``), read before and after the
run. Settings take turns within each repeat, so machine drift hits them alike.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "bench_prompts.jsonl"


@dataclass(frozen=True)
class Setting:
    name: str
    speculation: dict | None  # the request's "speculation" field; None: the gateway's default

    @staticmethod
    def parse(text: str) -> "Setting":
        """``NAME=JSON`` (``off={"drafter":"none"}``), ``NAME=default``, or a bare drafter name."""
        name, sep, value = text.partition("=")
        if not sep:
            return Setting(name, {"drafter": name})
        if value == "default":
            return Setting(name, None)
        try:
            spec = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"setting {name!r}: not JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise ValueError(f"setting {name!r}: expected a JSON object (a speculation field)")
        return Setting(name, spec)


DEFAULT_SETTINGS = (Setting("off", {"drafter": "none"}), Setting("default", None))


@dataclass
class RequestResult:
    prompt_id: str
    category: str
    tokens: int
    ttft_s: float | None  # None for peers timed end to end
    tpot_s: float | None
    latency_s: float
    tau: float
    drafted: int
    accepted: int
    text: str


@dataclass
class Run:
    setting: str
    concurrency: int
    repeat: int
    wall_s: float
    requests: list[RequestResult]
    accepted_per_pos: list[float] = field(default_factory=list)  # accepted per draft, by position

    @property
    def tokens_per_s(self) -> float:
        return sum(r.tokens for r in self.requests) / self.wall_s if self.wall_s else 0.0


def load_prompts(path: str | Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if "prompt" not in row and "messages" not in row:
            raise ValueError(f"{path}: row {i + 1} has neither prompt nor messages")
        row.setdefault("id", f"p{i}")
        row.setdefault("category", "all")
    return rows


def _counters(metrics: str, name: str) -> dict[tuple, float]:
    """``{labels: value}`` of one counter in a Prometheus text page."""
    out: dict[tuple, float] = {}
    for line in metrics.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].rsplit("} ", 1)
            out[tuple(sorted(kv.split("=", 1)[0] + "=" + kv.split("=", 1)[1].strip('"')
                             for kv in labels.split(",")))] = float(value)
    return out


def acceptance_by_position(before: str, after: str) -> list[float]:
    """Accepted draft tokens per verified sequence, by position in the accepted path."""
    per_pos, drafts = {}, 0.0
    pos_name, drafts_name = "specgrove:spec_decode_num_accepted_tokens_per_pos_total", \
        "specgrove:spec_decode_num_drafts_total"
    a, b = _counters(after, pos_name), _counters(before, pos_name)
    for labels, value in a.items():
        pos = int(dict(kv.split("=", 1) for kv in labels)["position"])
        per_pos[pos] = per_pos.get(pos, 0.0) + value - b.get(labels, 0.0)
    da, db = _counters(after, drafts_name), _counters(before, drafts_name)
    drafts = sum(v - db.get(k, 0.0) for k, v in da.items() if dict(kv.split("=", 1) for kv in k)["drafter"] != "none")
    if not drafts:
        return []
    return [round(per_pos.get(p, 0.0) / drafts, 4) for p in range(max(per_pos, default=-1) + 1)]


class Bench:
    def __init__(self, url: str, api_key: str | None, model: str, max_tokens: int, temperature: float,
                 seed: int | None) -> None:
        self.url, self.model = url.rstrip("/"), model
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed

    def _body(self, row: dict, setting: Setting) -> dict:
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "stream": True, "stream_options": {"include_usage": True}}
        body["messages"] = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        if self.seed is not None:
            body["seed"] = self.seed
        if setting.speculation is not None:
            body["speculation"] = setting.speculation
        return body

    async def _one(self, client: httpx.AsyncClient, row: dict, setting: Setting) -> RequestResult:
        start = time.perf_counter()
        first = last = None
        text, stats, usage = [], {}, {}
        async with client.stream("POST", self.url + "/v1/chat/completions", json=self._body(row, setting),
                                 headers=self.headers) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{row['id']}: HTTP {r.status_code}: {(await r.aread()).decode()[:300]}")
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"{row['id']}: {chunk['error']['message']}")
                now = time.perf_counter()
                for c in chunk.get("choices", []):
                    piece = c.get("delta", {}).get("content")
                    if piece:
                        first = first or now
                        last = now
                        text.append(piece)
                stats = chunk.get("specgrove", stats)
                usage = chunk.get("usage") or usage
        end = time.perf_counter()
        tokens = usage.get("completion_tokens", 0)
        ttft = (first or end) - start
        tpot = ((last - first) / (tokens - 1)) if first and last and tokens > 1 else None
        return RequestResult(row["id"], row["category"], tokens, ttft, tpot, end - start,
                             stats.get("mean_acceptance_length", 1.0), stats.get("drafted_tokens", 0),
                             stats.get("accepted_tokens", 0), "".join(text))

    async def run(self, rows: list[dict], setting: Setting, concurrency: int, repeat: int, progress) -> Run:
        async with httpx.AsyncClient(timeout=600) as client:
            before = (await client.get(self.url + "/metrics")).text
            queue: asyncio.Queue = asyncio.Queue()
            for row in rows:
                queue.put_nowait(row)
            results: list[RequestResult] = []

            async def worker() -> None:
                while not queue.empty():
                    results.append(await self._one(client, queue.get_nowait(), setting))
                    progress.update(1)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - start
            after = (await client.get(self.url + "/metrics")).text
        results.sort(key=lambda r: r.prompt_id)
        return Run(setting.name, concurrency, repeat, wall, results, acceptance_by_position(before, after))
