"""``specgrove generate``: load target and drafter in this process and run the step loop."""
from __future__ import annotations

import time
from dataclasses import dataclass

from specgrove.config import ModelRunConfig, tree_budget
from specgrove.runner import KVCacheConfig
from specgrove.speculate import GenerationRequest, generate
from specgrove.types import InvalidRequest, SamplingParams, TreeBudget


@dataclass(frozen=True)
class GenerateOptions:
    target: str
    draft_path: str | None
    drafter: str | None
    prompt: str
    chat: bool
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    tree: str | None
    tree_nodes: int | None
    tree_depth: int | None
    tree_top_k: int | None
    dtype: str
    device: str
    kernel_backend: str
    block_size: int
    kv_blocks: int
    as_json: bool


def run_generate(opts: GenerateOptions) -> dict:
    from draft_service.engine import DraftEngine
    from draft_service.factory import build_drafter
    from specgrove.modeling.loader import load_tokenizer, resolve_model
    from specgrove.runner import load_runner
    from target_service.engine import TargetEngine

    if opts.max_tokens < 1:
        raise InvalidRequest("max_tokens", f"must be >= 1, got {opts.max_tokens}")
    sampling = SamplingParams(opts.temperature, opts.top_p, opts.top_k, opts.seed)
    kind = opts.drafter or ("model" if opts.draft_path else "ngram")
    if kind == "model" and not opts.draft_path:
        raise InvalidRequest("draft", "--drafter model needs --draft PATH")
    budget = TreeBudget.off() if kind == "none" else tree_budget(
        opts.tree, opts.tree_nodes, opts.tree_depth, opts.tree_top_k)
    run = ModelRunConfig(opts.target, opts.dtype, opts.device, opts.kernel_backend,
                         KVCacheConfig(opts.block_size, opts.kv_blocks))
    path = resolve_model(opts.target)
    tokenizer = load_tokenizer(path)
    target = TargetEngine(load_runner(str(path), run.torch_dtype, run.torch_device, run.kv, run.kernel_backend))
    spec = "ngram" if kind in ("ngram", "none") else f"model:{opts.draft_path}"
    drafter = build_drafter(spec, target.vocab_size, run.torch_dtype, run.torch_device, run.kv,
                            run.kernel_backend)
    drafts = DraftEngine.of({kind: drafter}, kind)
    prompt_ids = _encode(tokenizer, opts.prompt, opts.chat)
    stops = set(target.runner.config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    req = GenerationRequest(0, tuple(prompt_ids), opts.max_tokens, sampling, budget,
                            stop_token_ids=tuple(sorted(stops)))
    if len(prompt_ids) >= target.max_model_len:
        raise InvalidRequest(
            "prompt", f"{len(prompt_ids)} tokens do not fit the context of {target.max_model_len}")
    start = time.perf_counter()
    out = generate(target, drafts, [req])[0]
    elapsed = time.perf_counter() - start
    return {
        "token_ids": out.token_ids,
        "text": tokenizer.decode(out.token_ids, skip_special_tokens=True),
        "finish_reason": out.finish_reason,
        "steps": out.steps,
        "drafted_tokens": out.drafted_tokens,
        "accepted_tokens": out.accepted_tokens,
        "mean_acceptance_length": out.mean_acceptance_length,
        "tokens_per_second": len(out.token_ids) / elapsed if elapsed > 0 else 0.0,
        "prompt_tokens": len(prompt_ids),
        "drafter": kind,
        "tree": _describe(budget),
    }


def _encode(tokenizer, prompt: str, chat: bool) -> list[int]:
    if not prompt:
        raise InvalidRequest("prompt", "the prompt is empty")
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(prompt)


def _describe(budget: TreeBudget) -> dict:
    if budget.is_static:
        return {"branching": list(budget.branching)}
    return {"nodes": budget.max_nodes, "depth": budget.max_depth, "top_k": budget.top_k}
