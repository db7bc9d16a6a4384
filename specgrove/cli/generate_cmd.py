"""``specgrove generate``: load target and drafter in this process and run the gateway's step
loop over the in-process ports (the same loop, stop handling and stats the servers use)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from specgrove.config import ModelRunConfig, parse_drafter_option, parse_tree_option
from specgrove.errors import InvalidRequest
from specgrove.kv import KVCacheConfig
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget


@dataclass(frozen=True)
class GenerateOptions:
    target: str
    drafter: str | None
    prompt: str
    chat: bool
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    tree: str
    dtype: str
    quantization: str
    device: str
    kernel_backend: str
    block_size: int
    kv_blocks: int
    as_json: bool


def run_generate(opts: GenerateOptions) -> dict:
    from draft_service.engine import DraftEngine
    from draft_service.factory import DraftTarget, build_drafter
    from draft_service.local import LocalDraft
    from gateway.job import JobSpec
    from gateway.offline import generate
    from gateway.speculation import effective_speculation
    from gateway.text import TextCodec
    from specgrove.modeling.loader import resolve_model
    from specgrove.runner import load_runner
    from target_service.engine import TargetEngine
    from target_service.local import LocalTarget

    if opts.max_tokens < 1:
        raise InvalidRequest("max_tokens", f"must be >= 1, got {opts.max_tokens}")
    sampling = SamplingParams(opts.temperature, opts.top_p, opts.top_k, opts.seed)
    spec = parse_drafter_option(opts.drafter)[1] if opts.drafter else _default_spec(opts.target)
    kind = spec.partition(":")[0]
    budget = TreeBudget.off() if kind == "none" else parse_tree_option(opts.tree)
    run = ModelRunConfig(str(resolve_model(opts.target)), opts.dtype, opts.device,
                         opts.kernel_backend, KVCacheConfig(opts.block_size, opts.kv_blocks),
                         quantization=opts.quantization)
    engine = TargetEngine(load_runner(run))
    codec = TextCodec(resolve_model(opts.target))
    prompt_ids = _encode(codec, opts.prompt, opts.chat)
    if len(prompt_ids) >= engine.max_model_len:
        raise InvalidRequest(
            "prompt", f"{len(prompt_ids)} tokens do not fit the context of {engine.max_model_len}")
    if kind == "eagle" and ":" not in spec:
        spec = f"eagle:{opts.target}"  # the head shipped for the target
    drafts = DraftEngine.of({kind: build_drafter("ngram" if kind == "none" else spec,
                                                 DraftTarget(run.model), run)}, kind)
    target = LocalTarget(engine, opts.target, run.dtype_name)
    job = JobSpec(tuple(prompt_ids), opts.max_tokens, sampling, drafter=kind, budget=budget)
    start = time.perf_counter()
    out = generate(target, LocalDraft(drafts, engine.vocab_size), [job], codec)[0]
    elapsed = time.perf_counter() - start
    if out.error is not None:
        raise RuntimeError(out.error.message)
    eff = effective_speculation(out.job)
    st = out.stats
    return {
        "token_ids": out.token_ids,
        "text": out.text,
        "finish_reason": out.finish_reason,
        "steps": st.steps,
        "drafted_tokens": st.drafted_tokens,
        "accepted_tokens": st.accepted_tokens,
        "mean_acceptance_length": st.mean_acceptance_length,
        "tokens_per_second": len(out.token_ids) / elapsed if elapsed > 0 else 0.0,
        "prompt_tokens": len(prompt_ids),
        "drafter": eff.drafter,
        "tree": eff.tree_json(),
    }


def _default_spec(target: str) -> str:
    from draft_service.factory import shipped_head

    return f"eagle:{target}" if shipped_head(target) is not None else "ngram"


def _encode(codec, prompt: str, chat: bool) -> list[int]:
    if not prompt:
        raise InvalidRequest("prompt", "the prompt is empty")
    if chat:
        return codec.encode_chat([{"role": "user", "content": prompt}])
    return codec.encode(prompt)
