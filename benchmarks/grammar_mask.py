"""What structured output costs per verify step: the grammar's per-node mask (``specgrove.grammar``).

With the embedded model's tokenizer (SmolLM2, vocabulary 49152) it times

* building the compiler (tokenizer info) once per target, and compiling each kind of grammar
  (cold, then again: XGrammar's cache);
* per verify step, for trees of N nodes drafted along a valid output: the depth-first walk
  that fills one bitmask row per node (``fill_tree_bitmask``: accept, fill, roll back), and
  the mask's application to float32 logits [N, V] (unpack the bits, ``masked_fill``).

Trees are random with mostly grammatical children, one refused token per node and
end-of-sequence where allowed (as ``tests/test_structured_output.py`` builds them); every
prefix of the output is one history. Medians over all histories and repeats.

    python benchmarks/grammar_mask.py --out benchmarks/results/grammar_mask_cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specgrove.grammar import GrammarCompiler, GrammarState, all_allowed, apply_bitmask_, fill_tree_bitmask  # noqa: E402
from specgrove.tree import TokenTree  # noqa: E402
from specgrove.types import Grammar  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"enum": ["fox", "dog", "cat"]}, "maxItems": 3},
    "ok": {"type": "boolean"}}, "required": ["name", "age", "tags", "ok"]}
GRAMMARS = {
    "json_object": (Grammar("json_object"), '{"city": "Paris", "population": 2148000, "tags": ["capital", "river"]}'),
    "json_schema": (Grammar("json_schema", json.dumps(SCHEMA)),
                    '{"name": "Reynard the fox", "age": 7, "tags": ["fox", "dog"], "ok": true}'),
    "regex": (Grammar("regex", r"\d{3}-\d{4} [A-Z][a-z]+ (street|road|lane)"), "555-0199 Baker street"),
    "choice": (Grammar("choice", choices=("positive", "negative", "neutral", "mixed feelings")), "mixed feelings"),
}


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)


def random_tree(state_of, output: list[int], nodes: int, rng: random.Random, vocab: int, eos: int) -> TokenTree:
    tokens, parents, frontier = [output[-1]], [-1], [0]
    while frontier and len(tokens) < nodes:
        u = frontier.pop(0)
        path = [tokens[n] for n in TokenTree(tuple(tokens), tuple(parents)).path_to(u)[1:]]
        m = state_of(output + path).matcher
        ok = []
        if not m.is_terminated():
            row = all_allowed(1, vocab)
            m.fill_next_token_bitmask(row, 0)
            ok = torch.nonzero(_unpack(row, vocab)[0]).flatten().tolist()
        kids = rng.sample(ok, min(len(ok), rng.randint(1, 3))) + [rng.randrange(vocab)]
        for t in dict.fromkeys(kids + ([eos] if eos in ok else [])):
            if len(tokens) < nodes:
                tokens.append(t)
                parents.append(u)
                frontier.append(len(tokens) - 1)
    return TokenTree(tuple(tokens), tuple(parents))


def _unpack(bitmask, vocab):
    from specgrove.grammar import allowed_tokens

    return allowed_tokens(bitmask, vocab)


def time_steps(compiled, ids: list[int], sizes: list[int], repeats: int, vocab: int, eos: int) -> dict:
    rng = random.Random(0)
    out = {}
    for n in sizes:
        walk, apply = [], []
        for cut in range(1, len(ids) + 1):
            output = ids[:cut]
            tree = random_tree(lambda h: GrammarState(compiled, h), output, n, rng, vocab, eos)
            state = GrammarState(compiled, output)
            logits = torch.randn(len(tree), vocab)
            for _ in range(repeats):
                bitmask = all_allowed(len(tree), vocab)
                t0 = time.perf_counter()
                fill_tree_bitmask(state.matcher, tree, bitmask)
                t1 = time.perf_counter()
                apply_bitmask_(logits, bitmask)
                t2 = time.perf_counter()
                walk.append((t1 - t0) / len(tree))
                apply.append((t2 - t1) / len(tree))
        out[str(n)] = {"walk_ms_per_node": ms(statistics.median(walk)),
                       "apply_ms_per_node": ms(statistics.median(apply)),
                       "total_ms_per_step": ms(n * (statistics.median(walk) + statistics.median(apply)))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--sizes", default="1,8,32,64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from specgrove.modeling.loader import load_config, resolve_model

    path = resolve_model(args.model)
    cfg = load_config(path)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    compiler = GrammarCompiler.build(path, cfg.vocab_size, cfg.eos_token_ids)
    build_s = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(path)
    eos = cfg.eos_token_ids[0]
    sizes = [int(x) for x in args.sizes.split(",")]
    result = {"model": args.model, "vocab": cfg.vocab_size, "machine": platform.processor() or platform.machine(),
              "torch_threads": 1, "compiler_build_ms": ms(build_s), "grammars": {}}
    for name, (grammar, sentence) in GRAMMARS.items():
        t0 = time.perf_counter()
        compiled = compiler.compile(grammar)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiler.compile(grammar)
        cached = time.perf_counter() - t0
        ids = tok.encode(sentence, add_special_tokens=False)
        result["grammars"][name] = {"compile_ms": ms(cold), "compile_cached_ms": ms(cached), "output_tokens": len(ids),
                                    "per_tree_size": time_steps(compiled, ids, sizes, args.repeats, cfg.vocab_size, eos)}
        print(name, json.dumps(result["grammars"][name]), flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
