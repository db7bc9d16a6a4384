"""The gateway's default speculation against speculation off, interleaved per prompt.

``specgrove bench`` runs each setting as a block over all prompts, so on a machine whose speed
drifts over minutes the blocks see different machines. Here every prompt runs under both
settings back to back (the order alternating between prompts), through a running gateway's
REST API, seeded, ``max_tokens`` tokens each (EOS ignored); prints per-prompt tokens/s, the
ratio of medians, and how many completions are identical.

    python benchmarks/ab_default_vs_off.py --url http://127.0.0.1:8000 \
        --prompts ../shared/prompts/dev.jsonl --limit 16 --temperature 0.7
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import httpx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.prompts)][: args.limit]
    model = httpx.get(args.url + "/v1/models", timeout=30).json()["data"][0]["id"]
    tps: dict[str, list[float]] = {"off": [], "default": []}
    identical = 0
    for i, row in enumerate(rows):
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        texts = {}
        for name in (["off", "default"] if i % 2 == 0 else ["default", "off"]):
            body = {"model": model, "messages": messages, "max_tokens": args.max_tokens,
                    "temperature": args.temperature, "ignore_eos": True, "seed": 1234 + i}
            if name == "off":
                body["speculation"] = {"drafter": "none"}
            start = time.perf_counter()
            reply = httpx.post(args.url + "/v1/chat/completions", json=body, timeout=600).json()
            tps[name].append(reply["usage"]["completion_tokens"] / (time.perf_counter() - start))
            texts[name] = reply["choices"][0]["message"]["content"]
        identical += texts["off"] == texts["default"]
        print(row.get("id", i), {k: round(v[-1], 1) for k, v in tps.items()}, flush=True)
    medians = {k: statistics.median(v) for k, v in tps.items()}
    result = {"median_tps": medians, "default_over_off": medians["default"] / medians["off"],
              "identical": identical, "prompts": len(rows), "temperature": args.temperature, "per_prompt": tps}
    print(json.dumps({k: v for k, v in result.items() if k != "per_prompt"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
