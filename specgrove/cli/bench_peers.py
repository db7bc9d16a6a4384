"""``specgrove bench --peer``: other engines on the same prompts, in the same run, at batch 1.

- ``hf``: Hugging Face ``generate`` (greedy, or sampled at the run's temperature);
- ``hf-assisted``: the same with HF's prompt-lookup assisted generation
  (``prompt_lookup_num_tokens``), the closest HF counterpart of our ``lookup`` drafter;
- ``llama.cpp``: ``llama-cpp-python`` on the model's GGUF file (the embedded model's is the one
  we convert from), with the model's chat template, all CPU threads. It is not a dependency
  (it builds from source in minutes): ``pip install llama-cpp-python`` first.

Each request is timed end to end (no streaming, so TTFT is not measured); a run's throughput is
its generated tokens over the sum of its request times, as at concurrency 1.
"""
from __future__ import annotations

import time

from specgrove.cli.bench_run import RequestResult, Run

PEERS = ("hf", "hf-assisted", "llama.cpp")


def peer_runs(model: str, rows: list[dict], peer: str, max_tokens: int, temperature: float,
              repeats: int, progress) -> list[Run]:
    if peer == "llama.cpp":
        return llama_cpp_runs(model, rows, max_tokens, temperature, repeats, progress)
    return hf_runs(model, rows, peer, max_tokens, temperature, repeats, progress)


def gguf_of(model: str) -> str:
    """The GGUF file llama.cpp runs: the model itself when it is one, a named model's file."""
    from pathlib import Path

    from specgrove.model_paths import NAMED_MODELS, named_gguf

    if model in NAMED_MODELS:
        return str(named_gguf(model))
    if Path(model).is_file() and model.endswith(".gguf"):
        return model
    raise ValueError(f"--peer llama.cpp needs a GGUF model (a .gguf file or a named model), got {model!r}")


def check_peers(peers: tuple[str, ...]) -> None:
    """Refuse a peer that cannot run here before any benchmark time is spent."""
    if "llama.cpp" in peers:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise ValueError("--peer llama.cpp needs llama-cpp-python: pip install llama-cpp-python "
                             "(it builds llama.cpp from source, a few minutes)")


def llama_cpp_runs(model: str, rows: list[dict], max_tokens: int, temperature: float, repeats: int,
                   progress) -> list[Run]:
    import os

    from llama_cpp import Llama

    lm = Llama(model_path=gguf_of(model), n_ctx=4096, n_threads=os.cpu_count(), verbose=False, seed=0)
    runs = []
    for repeat in range(repeats):
        results = []
        for row in rows:
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            start = time.perf_counter()
            out = lm.create_chat_completion(messages, max_tokens=max_tokens, temperature=temperature,
                                            top_k=0 if temperature > 0 else 1, top_p=1.0, min_p=0.0,
                                            repeat_penalty=1.0)
            latency = time.perf_counter() - start
            n = out["usage"]["completion_tokens"]
            results.append(RequestResult(row["id"], row["category"], n, None, None, latency, 1.0, 0, 0,
                                         out["choices"][0]["message"]["content"]))
            progress.update(1)
        runs.append(Run("peer:llama.cpp", 1, repeat, sum(r.latency_s for r in results), results))
    return runs


def hf_runs(model: str, rows: list[dict], peer: str, max_tokens: int, temperature: float,
            repeats: int, progress) -> list[Run]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specgrove.config import auto_cpu_dtype
    from specgrove.modeling.loader import resolve_model

    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(str(path))
    dtype = getattr(torch, auto_cpu_dtype())  # as `--dtype auto` serves
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
