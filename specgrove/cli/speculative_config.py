"""vLLM's ``--speculative-config`` accepted by ``specgrove up``, so vLLM users' commands work.

``{"method": "ngram" | "eagle" | "eagle3" | "draft_model" | "suffix", "num_speculative_tokens":
K, "model": PATH}`` becomes a drafter for the draft service, made the default, and a default
tree that is a chain of ``K`` tokens (what vLLM proposes per step). ``prompt_lookup_max`` sets
the n-gram length. Anything this server would not honour is refused, not ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

KNOWN_KEYS = {"method", "num_speculative_tokens", "model", "prompt_lookup_max", "prompt_lookup_min"}


@dataclass(frozen=True)
class SpeculativeConfig:
    drafter: str  # NAME=KIND[:SPEC] for the draft service
    default_drafter: str  # its NAME
    default_tree: str  # a chain of K: "1,1,1"


def parse(text: str, target: str) -> SpeculativeConfig:
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--speculative-config is not JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError("--speculative-config must be a JSON object")
    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"--speculative-config: unsupported keys {unknown} (supported: {sorted(KNOWN_KEYS)})")
    k = cfg.get("num_speculative_tokens")
    if not isinstance(k, int) or not 1 <= k <= 32:
        raise ValueError("--speculative-config needs num_speculative_tokens, an integer in [1, 32]")
    method, model = cfg.get("method") or ("draft_model" if cfg.get("model") else "ngram"), cfg.get("model")
    if method == "ngram":
        n = cfg.get("prompt_lookup_max")
        spec = f"ngram:{int(n)}" if n else "ngram"
    elif method in ("eagle", "eagle3"):
        spec = f"eagle:{model or target}"
    elif method == "draft_model":
        if not model:
            raise ValueError("--speculative-config: method draft_model needs a model")
        spec = f"model:{model}"
    elif method == "suffix":
        spec = "suffix"
    else:
        raise ValueError(f"--speculative-config: method {method!r} is not supported "
                         f"(ngram, eagle, eagle3, draft_model, suffix)")
    name = "spec-" + method.replace("_", "-")
    return SpeculativeConfig(f"{name}={spec}", name, ",".join(["1"] * k))
