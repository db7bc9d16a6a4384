"""Batch-1 greedy decoding on the embedded SmolLM2-135M-Instruct: HF generate vs our engine.

Measured in one process, interleaved per prompt and repeat so machine noise hits every method
alike: Hugging Face ``generate`` (the baseline), our engine with speculation off (root-only
trees), and our engine with the n-gram drafter. Every run produces exactly ``--max-tokens``
tokens (EOS ignored) so tokens/s compare like for like. Reports medians per prompt, per category
and overall, plus our/HF ratios, as text and JSON.

    python benchmarks/engine_decode.py --prompts ../shared/prompts/dev.jsonl --out results.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import torch

from draft_service.drafters.ngram import NgramDrafter
from draft_service.engine import DraftEngine
from specgrove.modeling.loader import load_tokenizer, resolve_model
from specgrove.runner import KVCacheConfig, load_runner
from specgrove.speculate import GenerationRequest, generate
from specgrove.types import TreeBudget
from target_service.engine import TargetEngine

HERE = Path(__file__).parent


def load_prompts(path: Path, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def time_hf(model, prompt: list[int], n: int) -> float:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - len(prompt) == n
    return n / elapsed


def time_ours(target, drafts, prompt: list[int], n: int, budget: TreeBudget, seq_id: int):
    req = GenerationRequest(seq_id, tuple(prompt), n, budget=budget)
    start = time.perf_counter()
    out = generate(target, drafts, [req])[0]
    elapsed = time.perf_counter() - start
    assert len(out.token_ids) == n
    return n / elapsed, out.mean_acceptance_length


def run(args) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    target = TargetEngine(load_runner(str(path), torch.float32, torch.device("cpu"),
                                      KVCacheConfig(16, 512)))
    drafts = DraftEngine.of({"ngram": NgramDrafter()}, "ngram")
    ngram_budget = TreeBudget(max_nodes=args.ngram_nodes, max_depth=args.ngram_depth)
    rows = []
    seq = 0
    warm = tok.encode("warm up")
    time_hf(hf, warm, 8)
    time_ours(target, drafts, warm, 8, TreeBudget.off(), -1)
    for item in load_prompts(Path(args.prompts), args.limit):
        text = tok.apply_chat_template([{"role": "user", "content": item["prompt"]}],
                                       add_generation_prompt=True, tokenize=False)
        prompt = tok.encode(text, add_special_tokens=False)
        hf_tps, plain_tps, ngram_tps, taus = [], [], [], []
        with torch.inference_mode():
            for _ in range(args.repeats):
                hf_tps.append(time_hf(hf, prompt, args.max_tokens))
                seq += 1
                plain_tps.append(time_ours(target, drafts, prompt, args.max_tokens, TreeBudget.off(), seq)[0])
                seq += 1
                tps, tau = time_ours(target, drafts, prompt, args.max_tokens, ngram_budget, seq)
                ngram_tps.append(tps)
                taus.append(tau)
        row = {
            "id": item["id"], "category": item["category"], "prompt_tokens": len(prompt),
            "hf_tps": statistics.median(hf_tps), "plain_tps": statistics.median(plain_tps),
            "ngram_tps": statistics.median(ngram_tps), "ngram_tau": statistics.median(taus),
        }
        row["plain_vs_hf"] = row["plain_tps"] / row["hf_tps"]
        row["ngram_vs_plain"] = row["ngram_tps"] / row["plain_tps"]
        rows.append(row)
        print(_fmt(row["id"], row), flush=True)
    return {"meta": _meta(args), "prompts": rows, "summary": _summarise(rows)}


def _summarise(rows: list[dict]) -> dict:
    groups = defaultdict(list)
    for r in rows:
        groups[r["category"]].append(r)
    groups["overall"] = rows
    keys = ("hf_tps", "plain_tps", "ngram_tps", "ngram_tau", "plain_vs_hf", "ngram_vs_plain")
    return {name: {k: statistics.median(r[k] for r in rs) for k in keys} | {"n": len(rs)}
            for name, rs in groups.items()}


def _fmt(name: str, r: dict) -> str:
    return (f"{name:<12} hf {r['hf_tps']:6.1f}  plain {r['plain_tps']:6.1f} ({r['plain_vs_hf']:.2f}x)"
            f"  ngram {r['ngram_tps']:6.1f} tau {r['ngram_tau']:.2f} ({r['ngram_vs_plain']:.2f}x plain)")


def _meta(args) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=HERE).stdout.strip()
    except OSError:
        commit = "unknown"
    return {
        "commit": commit, "machine": platform.platform(), "processor": platform.processor(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": args.model, "dtype": "float32", "batch": 1, "max_tokens": args.max_tokens,
        "repeats": args.repeats, "prompts": str(args.prompts),
        "ngram_budget": {"nodes": args.ngram_nodes, "depth": args.ngram_depth},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--ngram-nodes", type=int, default=8)
    ap.add_argument("--ngram-depth", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = run(args)
    print()
    for name, s in result["summary"].items():
        print(_fmt(f"[{name}]", s))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
