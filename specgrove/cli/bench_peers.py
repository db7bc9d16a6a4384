"""``specgrove bench --peer``: other engines on the same prompts, in the same run, at batch 1.

- ``hf``: Hugging Face ``generate`` (greedy, or sampled at the run's temperature);
- ``hf-assisted``: the same with HF's prompt-lookup assisted generation
  (``prompt_lookup_num_tokens``), the closest HF counterpart of our ``lookup`` drafter.

Each request is timed end to end (no streaming, so TTFT is not measured); a run's throughput is
its generated tokens over the sum of its request times, as at concurrency 1. llama.cpp is not a
peer here: ``llama-cpp-python`` builds from source on this project's machines (minutes), so it is
left to ``benchmarks/`` when installed.
"""
from __future__ import annotations

import time

from specgrove.cli.bench_run import RequestResult, Run

PEERS = ("hf", "hf-assisted")


def hf_runs(model: str, rows: list[dict], peer: str, max_tokens: int, temperature: float,
            repeats: int, progress) -> list[Run]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specgrove.kernels.cpu_build import has_native_bf16
    from specgrove.modeling.loader import resolve_model

    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(str(path))
    dtype = torch.bfloat16 if has_native_bf16() else torch.float32  # as `--dtype auto` serves
    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    extra = {"prompt_lookup_num_tokens": 10} if peer == "hf-assisted" else {}
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    runs = []
    for repeat in range(repeats):
        results = []
        for row in rows:
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
            start = time.perf_counter()
            with torch.inference_mode():
                out = lm.generate(ids, max_new_tokens=max_tokens, pad_token_id=tok.eos_token_id,
                                  **sampling, **extra)
            latency = time.perf_counter() - start
            new = out[0, ids.shape[1]:]
            results.append(RequestResult(row["id"], row["category"], int(new.numel()), None, None, latency,
                                         1.0, 0, 0, tok.decode(new, skip_special_tokens=True)))
            progress.update(1)
        runs.append(Run(f"peer:{peer}", 1, repeat, sum(r.latency_s for r in results), results))
    return runs
