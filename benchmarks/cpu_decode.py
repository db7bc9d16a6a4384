"""CPU decoding of the embedded model, every configuration in one run, beside HF and llama.cpp.

Batch 1, ``--max-tokens`` new tokens per prompt (EOS ignored, so every run decodes the same
count), greedy, chat template; the configurations run back to back for each prompt and repeat
(interleaved, medians), each reported with its ratio to HF ``generate`` (float32) and to
llama.cpp (``llama-cpp-python`` on the same GGUF, when it is installed). Our configurations go
through the gateway's step loop over the in-process ports: float32 / bfloat16 / int8 weights,
plain and with the shipped EAGLE head. Also measured: prefill of a ~1k-token prompt, verify cost
by tree size, decode step time at 100 / 1k / 4k context with the reference attention and the C++
kernel, and int8's quality against bfloat16 (greedy agreement, perplexity of bf16's outputs).

    python benchmarks/cpu_decode.py --prompts ../shared/prompts/dev.jsonl \
        --out benchmarks/results/cpu_decode.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: benchmarks.common
from benchmarks.common import HERE, chat_ids, decode_tps, load_prompts, meta
from specgrove.config import ModelRunConfig
from specgrove.kv import KVCacheConfig
from specgrove.types import PrefillRequest, VerifyItem
from specgrove.tree import TokenTree

MODEL = "smollm2-135m-instruct"


def ours(dtype: str, quantization: str = "none", backend: str = "auto", eagle: bool = False):
    """(target port, draft port) for one configuration."""
    from draft_service.drafters.ngram import NgramDrafter
    from draft_service.engine import DraftEngine
    from draft_service.factory import DraftTarget, build_drafter
    from draft_service.local import LocalDraft
    from specgrove.modeling.loader import resolve_model
    from specgrove.runner import load_runner
    from target_service.engine import TargetEngine
    from target_service.local import LocalTarget

    run = ModelRunConfig(str(resolve_model(MODEL)), dtype, "cpu", backend, KVCacheConfig(16, 1024),
                         quantization=quantization)
    engine = TargetEngine(load_runner(run))
    drafters = {"ngram": NgramDrafter()}
    if eagle:
        drafters["eagle"] = build_drafter(f"eagle:{MODEL}", DraftTarget(MODEL), run)
    target = LocalTarget(engine, MODEL, run.dtype_name)
    return target, LocalDraft(DraftEngine.of(drafters, "eagle" if eagle else "ngram"), engine.vocab_size)


def hf_tps(model, prompt, n: int) -> float:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return n / (time.perf_counter() - start)


def llama_cpp_model():
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from specgrove.model_paths import named_gguf

    return Llama(model_path=str(named_gguf(MODEL)), n_ctx=4096, n_threads=torch.get_num_threads(),
                 verbose=False)


def llama_cpp_tps(llm, prompt, n: int) -> float:
    llm.reset()
    start = time.perf_counter()
    count = 0
    for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        count += 1
        if count >= n:
            break
    return count / (time.perf_counter() - start)


def decode_table(args, configs: dict, rows: list[dict]) -> dict:
    from transformers import AutoModelForCausalLM

    from gateway.text import TextCodec
    from specgrove.modeling.loader import resolve_model

    codec = TextCodec(resolve_model(MODEL))
    hf = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL), dtype=torch.float32).eval()
    llm = llama_cpp_model()
    per = defaultdict(lambda: defaultdict(list))
    for row in rows:
        prompt = chat_ids(codec, row["prompt"])
        for _ in range(args.repeats):
            with torch.inference_mode():
                per["hf float32"][row["category"]].append(hf_tps(hf, prompt, args.max_tokens))
            if llm is not None:
                per["llama.cpp"][row["category"]].append(llama_cpp_tps(llm, prompt, args.max_tokens))
            for name, (ports, tree) in configs.items():
                tps, tau, _ = decode_tps(ports, prompt, args.max_tokens, tree)
                per[name][row["category"]].append(tps)
                per[name + " tau"][row["category"]].append(tau)
        print(row["id"], {k: round(v[row["category"]][-1], 1) for k, v in per.items()}, flush=True)
    table = {}
    for name, cats in per.items():
        table[name] = {c: statistics.median(v) for c, v in cats.items()}
        table[name]["overall"] = statistics.median(x for v in cats.values() for x in v)
    hf_all = table["hf float32"]["overall"]
    llama_all = table.get("llama.cpp", {}).get("overall")
    for name in list(table):
        if not name.endswith("tau"):
            table[name]["vs_hf"] = table[name]["overall"] / hf_all
            if llama_all:
                table[name]["vs_llama_cpp"] = table[name]["overall"] / llama_all
    return table


def step_ms(engine, tree_nodes: int, context: int, repeats: int = 7) -> float:
    """Median verify time of one sequence at ``context`` committed tokens."""
    (r,) = engine.prefill([PrefillRequest(1, tuple(range(100, 100 + context)))])
    pending, times = r.first_token, []
    for i in range(repeats + 2):
        tree = TokenTree((pending,) + tuple(range(500, 499 + tree_nodes)), (-1,) + (0,) * (tree_nodes - 1))
        start = time.perf_counter()
        (res,) = engine.verify([VerifyItem(1, tree)])
        if i >= 2:
            times.append(time.perf_counter() - start)
        pending = res.bonus_token
    engine.release(1)
    return 1e3 * statistics.median(times)


def step_tables(configs_engines: dict) -> dict:
    out = {}
    for name, engine in configs_engines.items():
        out[name] = {"verify_nodes_ms": {n: step_ms(engine, n, 300) for n in (1, 2, 4, 8, 16, 32)},
                     "decode_context_ms": {c: step_ms(engine, 1, c) for c in (100, 1000, 4000)}}
        v = out[name]["verify_nodes_ms"]
        out[name]["verify16_over_1"] = v[16] / v[1]
        print(name, out[name], flush=True)
    return out


def prefill_ms(engine, n: int = 1024) -> float:
    times = []
    for i in range(3):
        start = time.perf_counter()
        engine.prefill([PrefillRequest(10 + i, tuple(range(200, 200 + n)))])
        times.append(time.perf_counter() - start)
        engine.release(10 + i)
    return 1e3 * statistics.median(times)


def int8_quality(args, bf16_ports, int8_ports, rows) -> dict:
    """Greedy agreement of int8 with bf16 over max_tokens (position by position, so one early
    near-tie makes the rest differ), the teacher-forced top-1 agreement on bf16's outputs (each
    position judged on the same prefix), and the perplexity of bf16's outputs under each."""
    from gateway.text import TextCodec
    from specgrove.modeling.loader import resolve_model
    from specgrove.runner import ForwardItem

    codec = TextCodec(resolve_model(MODEL))
    agree, forced, total, nll = 0, 0, 0, {"bf16": 0.0, "int8": 0.0}
    for row in rows:
        prompt = chat_ids(codec, row["prompt"])
        _, _, a = decode_tps(bf16_ports, prompt, args.max_tokens, None)
        _, _, b = decode_tps(int8_ports, prompt, args.max_tokens, None)
        agree += sum(x == y for x, y in zip(a, b))
        total += len(a)
        seq = tuple(prompt) + tuple(a)
        top1 = {}
        for name, ports in (("bf16", bf16_ports), ("int8", int8_ports)):
            runner = ports[0].engine.runner
            runner.blocks.add_sequence(999)
            logits = runner.forward([ForwardItem(999, seq, range(len(seq)), all_logits=True)])[0]
            runner.blocks.free(999)
            logp = logits[len(prompt) - 1:-1].float().log_softmax(-1)
            nll[name] -= logp.gather(-1, torch.tensor(a)[:, None]).sum().item()
            top1[name] = logp.argmax(-1)
        forced += int((top1["bf16"] == top1["int8"]).sum())
    return {"greedy_agreement": agree / total, "teacher_forced_top1_agreement": forced / total,
            "ppl_bf16_outputs": {k: math.exp(v / total) for k, v in nll.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", default=str(HERE / "prompts.jsonl"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tree", default="8:4", help="the EAGLE rows' tree")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = load_prompts(args.prompts, args.limit)
    f32, bf16, int8 = ours("float32"), ours("bfloat16", eagle=True), ours("bfloat16", "int8", eagle=True)
    from specgrove.kernels.cpu_build import has_native_bf16

    # The reference row (oneDNN's bf16 matmuls, reference attention) takes minutes per step
    # table on CPUs without native bf16, where oneDNN's bf16 matmuls are slow: left out there.
    bf16_ref = ours("bfloat16", backend="torch") if has_native_bf16() else None
    configs = {"specgrove float32": (f32, None), "specgrove bfloat16": (bf16, None),
               "specgrove int8": (int8, None), "specgrove bfloat16 + eagle": (bf16, args.tree),
               "specgrove int8 + eagle": (int8, args.tree)}
    result = {"decode_tps": decode_table(args, configs, rows)}
    engines = {"float32": f32[0].engine, "bfloat16": bf16[0].engine, "int8": int8[0].engine}
    if bf16_ref is not None:
        engines["bfloat16, reference attention + oneDNN"] = bf16_ref[0].engine
    result["steps"] = step_tables(engines)
    result["prefill_1k_ms"] = {name: prefill_ms(e) for name, e in engines.items()}
    result["int8_quality"] = int8_quality(args, bf16, int8, rows)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=1))
    if args.out:
        info = meta(model=MODEL, max_tokens=args.max_tokens, repeats=args.repeats, tree=args.tree,
                    prompts=str(args.prompts))
        Path(args.out).write_text(json.dumps({"meta": info, **result}, indent=2))


if __name__ == "__main__":
    main()
