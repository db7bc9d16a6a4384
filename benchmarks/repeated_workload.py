"""Repeated workloads through the gateway: what the ``suffix`` drafter's global structure buys.

SuffixDecoding (Oliaro et al., NeurIPS 2025) drafts from the request's own text and from a
global structure over earlier requests' text. Two workloads, each sent twice in a row (pass 1,
then pass 2 with the very same requests), one request at a time:

- ``repeat``: the prompts of a JSONL file (default: the 30 dev prompts), asked twice;
- ``edit``: JSON- and code-editing prompts made here (seeded), whose answers copy most of
  their input: change one field of a JSON object, rename one identifier in a piece of code.

Arms, interleaved per request so that machine drift hits all alike: ``off`` (speculation off),
``lookup`` (the n-gram drafter), ``suffix`` (with the global structure) and ``suffix_local``
(``suffix:budget=0``, the request's own text only). Per workload, pass and arm: tau (mean
acceptance length), end-to-end tokens/s and the speedup against ``off`` on the same requests.

By default it starts ``specgrove up`` with those drafters (a fresh global structure, so pass 1
is cold); ``--url`` uses a running gateway instead, which must have them loaded under the
names given by ``--lookup`` / ``--suffix`` / ``--suffix-local``, e.g.

    specgrove up --drafter lookup=ngram --drafter suffix=suffix --drafter suffix_local=suffix:budget=0
    python benchmarks/repeated_workload.py --url http://127.0.0.1:8000 --out benchmarks/results/repeated.json
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: benchmarks.common
from benchmarks.common import REPO, load_prompts, meta
from benchmarks.serve import wait_healthy

DEV_PROMPTS = REPO.parent / "shared" / "prompts" / "dev.jsonl"
ARMS = ("off", "lookup", "suffix_local", "suffix")


# --- the edit workload ---------------------------------------------------------------------------
NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov",
         "Donald Knuth", "Frances Allen", "John Backus", "Radia Perlman", "Ken Thompson"]
CITIES = ["Lisbon", "Oslo", "Kyoto", "Quito", "Nairobi", "Tallinn", "Porto", "Hobart"]
ROLES = ["admin", "editor", "viewer", "billing", "support", "owner"]


def json_edit_prompt(rng: random.Random, i: int) -> dict:
    name = rng.choice(NAMES)
    record = {"id": 1000 + i, "name": name, "email": name.lower().replace(" ", ".") + "@example.com",
              "active": rng.random() < 0.5, "roles": rng.sample(ROLES, 2),
              "address": {"street": f"{rng.randint(1, 99)} Harbour Road", "city": rng.choice(CITIES),
                          "postcode": f"{rng.randint(10000, 99999)}"},
              "score": round(rng.uniform(0, 100), 1), "tags": rng.sample(["new", "vip", "beta", "trial"], 2)}
    field, value = rng.choice([("active", not record["active"]), ("score", round(rng.uniform(0, 100), 1)),
                               ("email", f"user{i}@example.org")])
    body = json.dumps(record, indent=2)
    prompt = (f"Here is a JSON object:\n```json\n{body}\n```\nReturn the complete JSON object with "
              f"\"{field}\" set to {json.dumps(value)}, every other field unchanged. Output only the JSON.")
    return {"id": f"json-{i:02d}", "category": "json-edit", "prompt": prompt}


def code_edit_prompt(rng: random.Random, i: int) -> dict:
    old, new = rng.choice([("total", "running_sum"), ("items", "records"), ("count", "n_seen"),
                           ("result", "output"), ("value", "amount")])
    threshold, factor = rng.randint(2, 50), rng.randint(2, 9)
    code = (f"def summarize_{i}({old}_list, limit={threshold}):\n"
            f"    \"\"\"Sum the {old}s under the limit, scaled by {factor}.\"\"\"\n"
            f"    {old} = 0\n"
            f"    for x in {old}_list:\n"
            f"        if x < limit:\n"
            f"            {old} += x * {factor}\n"
            f"    print(\"{old} so far:\", {old})\n"
            f"    return {old}\n\n\n"
            f"def report_{i}(rows):\n"
            f"    {old} = summarize_{i}([r[\"value\"] for r in rows])\n"
            f"    return {{\"{old}\": {old}, \"rows\": len(rows)}}\n")
    prompt = (f"Rename the variable `{old}` to `{new}` everywhere in this Python code (names that "
              f"contain it too) and return the whole code, nothing else:\n```python\n{code}```")
    return {"id": f"code-{i:02d}", "category": "code-edit", "prompt": prompt}


def edit_prompts(count: int, seed: int) -> list[dict]:
    """``count`` JSON edits and ``count`` code edits, the same for the same seed."""
    rng = random.Random(seed)
    return [make(rng, i) for i in range(count) for make in (json_edit_prompt, code_edit_prompt)]


# --- requests -------------------------------------------------------------------------------------
def complete(client: httpx.Client, base: str, args, prompt: str, speculation: dict, seed: int | None) -> dict:
    body = {"model": args.model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": args.max_tokens, "temperature": args.temperature, "speculation": speculation}
    if seed is not None:
        body["seed"] = seed  # the same tokens in both passes when sampling
    start = time.perf_counter()
    r = client.post(base + "/v1/chat/completions", json=body)
    seconds = time.perf_counter() - start
    r.raise_for_status()
    out = r.json()
    return {"tokens": out["usage"]["completion_tokens"], "seconds": seconds,
            "tau": out["specgrove"]["mean_acceptance_length"], "text": out["choices"][0]["message"]["content"]}


def tree_of(text: str | None):
    """``--tree``: ``NODES:DEPTH[:TOP_K]`` (dynamic) or a static shape ``4,2,2,1``."""
    if not text:
        return None
    if ":" not in text:
        return text
    parts = [int(x) for x in text.split(":")]
    return {"nodes": parts[0], "depth": parts[1], **({"top_k": parts[2]} if len(parts) > 2 else {})}


def speculations(args) -> dict[str, dict]:
    tree = tree_of(args.tree)
    arms = {"off": {"drafter": "none"}}
    for arm, name in (("lookup", args.lookup), ("suffix_local", args.suffix_local), ("suffix", args.suffix)):
        arms[arm] = {"drafter": name, **({"tree": tree} if tree else {})}
    return arms


def run_workload(base: str, args, name: str, rows: list[dict]) -> list[dict]:
    """Both passes over ``rows``, every arm per request; one record per (pass, request, arm)."""
    arms, records = speculations(args), []
    with httpx.Client(timeout=900) as client:
        for pass_no in (1, 2):
            for i, row in enumerate(rows):
                seed = args.seed + i if args.temperature > 0 else None
                for arm in ARMS:
                    r = complete(client, base, args, row["prompt"], arms[arm], seed)
                    records.append({"workload": name, "pass": pass_no, "id": row["id"], "arm": arm, **r})
                line = " ".join(f"{a} {rec['tokens'] / rec['seconds']:5.1f}/{rec['tau']:.2f}"
                                for a, rec in zip(ARMS, records[-len(ARMS):]))
                print(f"[{name} pass {pass_no}] {row['id']:<10} tok/s/tau: {line}", flush=True)
    return records


def summarise(records: list[dict]) -> dict:
    """Per workload and pass: each arm's tokens/s (total tokens / total seconds), mean tau,
    speedup against off, and the share of texts equal to off's."""
    out: dict = {}
    for key in sorted({(r["workload"], r["pass"]) for r in records}):
        rs = [r for r in records if (r["workload"], r["pass"]) == key]
        off = {r["id"]: r for r in rs if r["arm"] == "off"}
        off_tps = sum(r["tokens"] for r in off.values()) / sum(r["seconds"] for r in off.values())
        arms = {}
        for arm in ARMS:
            mine = [r for r in rs if r["arm"] == arm]
            tps = sum(r["tokens"] for r in mine) / sum(r["seconds"] for r in mine)
            arms[arm] = {"tps": tps, "speedup": tps / off_tps, "tau": sum(r["tau"] for r in mine) / len(mine),
                         "same_text": sum(r["text"] == off[r["id"]]["text"] for r in mine) / len(mine)}
        out[f"{key[0]} pass {key[1]}"] = arms
    return out


def start_up(args) -> tuple[subprocess.Popen, str]:
    suffix = "suffix" + (":" + args.suffix_options if args.suffix_options else "")
    cmd = [sys.executable, "-m", "specgrove.cli", "up", "--target", args.model, "--port", str(args.port),
           "--grpc-port", str(args.port + 1), "--target-port", str(args.port + 2),
           "--draft-port", str(args.port + 3), "--drafter", f"{args.lookup}=ngram",
           "--drafter", f"{args.suffix}={suffix}", "--drafter", f"{args.suffix_local}=suffix:budget=0",
           *args.up_args.split()]
    return subprocess.Popen(cmd), f"http://127.0.0.1:{args.port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="a running gateway [start `specgrove up`]")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(DEV_PROMPTS if DEV_PROMPTS.exists() else
                                             REPO / "benchmarks" / "prompts.jsonl"))
    ap.add_argument("--limit", type=int, default=30, help="prompts of the repeat workload")
    ap.add_argument("--edit-count", type=int, default=8, help="JSON edits and code edits each")
    ap.add_argument("--workloads", default="repeat,edit")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--tree", default="16:8", help="every drafting arm's tree [16:8]; '' = the gateway's default")
    ap.add_argument("--lookup", default="lookup", help="the n-gram drafter's name")
    ap.add_argument("--suffix", default="suffix", help="the suffix drafter's name (global structure)")
    ap.add_argument("--suffix-local", default="suffix_local", help="a suffix drafter with budget=0")
    ap.add_argument("--suffix-options", default="", help="options of the started suffix drafter, e.g. prompts=1")
    ap.add_argument("--up-args", default="", help="extra `specgrove up` options")
    ap.add_argument("--port", type=int, default=8300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    workloads = {"repeat": lambda: load_prompts(args.prompts, args.limit),
                 "edit": lambda: edit_prompts(args.edit_count, args.seed)}
    chosen = [w for w in args.workloads.split(",") if w]
    proc, base = (None, args.url.rstrip("/")) if args.url else start_up(args)
    try:
        if proc is not None:
            wait_healthy(base, proc)
        with httpx.Client(timeout=900) as client:  # warm-up: first-call costs out of the numbers
            for spec in speculations(args).values():
                complete(client, base, argparse.Namespace(**{**vars(args), "max_tokens": 4}), "Hello", spec, None)
        records = [rec for w in chosen for rec in run_workload(base, args, w, workloads[w]())]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    summary = summarise(records)
    for key, arms in summary.items():
        print(f"[{key}] " + "  ".join(f"{arm} {s['tps']:.1f} tok/s x{s['speedup']:.2f} tau {s['tau']:.2f}"
                                      for arm, s in arms.items()))
    if args.out:
        info = meta(model=args.model, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                    tree=args.tree, prompts=args.prompts, limit=args.limit, edit_count=args.edit_count,
                    url=args.url, suffix_options=args.suffix_options, up_args=args.up_args)
        Path(args.out).write_text(json.dumps({"meta": info, "summary": summary, "requests": records}, indent=2))


if __name__ == "__main__":
    main()
