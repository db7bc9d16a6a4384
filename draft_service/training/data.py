"""Distillation data: the target's own responses, its features and its distributions.

1. ``generate_responses``: the target answers prompts in batches through the gateway's step loop
   over the in-process ports (plain decoding, half greedy and half sampled at temperature 0.8,
   one seed per prompt), until the prompts or the time run out.
2. ``capture``: one teacher-forced forward of every prompt + response through the target's own
   runner (prefill speed, ~20x decoding) records, per token, the hidden states at the feature
   layers -- exactly what ``Verify`` returns in service -- and, for the response tokens (the
   only ones the loss counts), the top-k of the target's distribution (soft labels). Stored as
   memory-mapped arrays in the work directory.
3. ``draft_vocabulary``: the most frequent response tokens (EAGLE-3's truncated vocabulary);
   ``d2t`` maps its entries back to target ids.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from specgrove.runner import ForwardItem, ModelRunner

SAMPLED_TEMPERATURE = 0.8


@dataclass(frozen=True)
class Sample:
    category: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.prompt_ids + self.response_ids


def save_samples(path: Path, samples: Sequence[Sample]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(asdict(s)) + "\n" for s in samples))
    tmp.replace(path)


def load_samples(path: Path) -> list[Sample]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Sample(r["category"], tuple(r["prompt_ids"]), tuple(r["response_ids"])) for r in rows]


def generate_responses(target, draft, encoded: Sequence[tuple[str, tuple[int, ...]]], max_new_tokens: int,
                       seed: int, deadline: float, batch: int = 48,
                       progress: Callable[[int], None] = lambda n: None) -> list[Sample]:
    """Answer ``encoded`` (category, prompt ids) with the target; stops at ``deadline``."""
    from dataclasses import replace

    from gateway.job import JobSpec
    from gateway.offline import OFFLINE, complete
    from specgrove.sampling_params import SamplingParams

    cfg = replace(OFFLINE, max_batch=batch)
    samples: list[Sample] = []
    for start in range(0, len(encoded), 2 * batch):
        if time.monotonic() > deadline:
            break
        chunk = encoded[start:start + 2 * batch]
        specs = [JobSpec(ids, max_new_tokens, SamplingParams(
            0.0 if (start + i) % 2 == 0 else SAMPLED_TEMPERATURE, seed=seed + start + i))
            for i, (_, ids) in enumerate(chunk)]
        outs = asyncio.run(complete(target, draft, specs, cfg=cfg))
        for (category, ids), out in zip(chunk, outs):
            if out.error is None and out.token_ids:
                samples.append(Sample(category, tuple(ids), tuple(out.token_ids)))
        progress(sum(len(o.token_ids) for o in outs))
    return samples


@dataclass(frozen=True)
class Dataset:
    """Token-aligned arrays over all samples (row = one token of some sample)."""

    tokens: np.ndarray  # [N] int32
    starts: np.ndarray  # [S + 1] int64 sample boundaries
    prompt_lens: np.ndarray  # [S] int32
    features: np.ndarray  # [N, W] int16 (bfloat16 bits): hidden states at the feature layers
    topk_ids: np.ndarray  # [N, K] int32: the target's top-k next tokens at each row
    topk_probs: np.ndarray  # [N, K] float16: their probabilities

    @staticmethod
    def load(directory: Path) -> "Dataset":
        meta = json.loads((directory / "dataset.json").read_text())
        n, w, k = meta["rows"], meta["width"], meta["top_k"]
        mm = lambda name, dtype, shape: np.memmap(directory / name, dtype=dtype, mode="r", shape=shape)
        return Dataset(np.load(directory / "tokens.npy"), np.load(directory / "starts.npy"),
                       np.load(directory / "prompt_lens.npy"), mm("features.bin", np.int16, (n, w)),
                       mm("topk_ids.bin", np.int32, (n, k)), mm("topk_probs.bin", np.float16, (n, k)))

    @property
    def num_samples(self) -> int:
        return len(self.prompt_lens)


@torch.inference_mode()
def capture(runner: ModelRunner, samples: Sequence[Sample], layers: Sequence[int], top_k: int,
            directory: Path, max_rows: int = 2048, progress: Callable[[int], None] = lambda n: None) -> Dataset:
    """Teacher-forced forwards of every sample: features and top-k distributions per token."""
    directory.mkdir(parents=True, exist_ok=True)
    lengths = [len(s.tokens) for s in samples]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n, width = int(starts[-1]), len(layers) * runner.config.hidden_size
    feats = np.memmap(directory / "features.bin", dtype=np.int16, mode="w+", shape=(n, width))
    ids = np.memmap(directory / "topk_ids.bin", dtype=np.int32, mode="w+", shape=(n, top_k))
    probs = np.memmap(directory / "topk_probs.bin", dtype=np.float16, mode="w+", shape=(n, top_k))
    for group in _row_groups(lengths, max_rows):
        items = []
        for i in group:
            runner.blocks.add_sequence(i)
            items.append(ForwardItem(i, samples[i].tokens, range(lengths[i]), all_logits=True, capture=True))
        try:  # final hidden states of every row; the LM head runs below on response rows only
            out = runner.run(items, capture_layers=sorted(layers), hidden_out=True)
        finally:
            for i in group:
                runner.blocks.free(i)
        for i, hidden, feature in zip(group, out.logits, out.features):
            a, b = starts[i], starts[i + 1]
            feats[a:b] = feature.to(torch.bfloat16).view(torch.int16).cpu().numpy()
            first = max(0, len(samples[i].prompt_ids) - 1)  # the row that predicts the response
            logits = runner.model.logits(hidden[first:]).float()
            top = torch.topk(logits, top_k, dim=-1)  # top-k of p = exp(top logits - logsumexp)
            ids[a + first:b] = top.indices.int().cpu().numpy()
            probs[a + first:b] = (top.values - torch.logsumexp(logits, -1, keepdim=True)).exp().half().cpu().numpy()
        progress(sum(lengths[i] for i in group))
    for array in (feats, ids, probs):
        array.flush()
    np.save(directory / "tokens.npy", np.array([t for s in samples for t in s.tokens], dtype=np.int32))
    np.save(directory / "starts.npy", starts)
    np.save(directory / "prompt_lens.npy", np.array([len(s.prompt_ids) for s in samples], dtype=np.int32))
    (directory / "dataset.json").write_text(json.dumps(
        {"rows": n, "width": width, "top_k": top_k, "layers": list(layers), "samples": len(samples)}))
    return Dataset.load(directory)


def _row_groups(lengths: Sequence[int], max_rows: int) -> list[list[int]]:
    """Consecutive samples batched so a forward holds at most ``max_rows`` tokens (one sample
    longer than that goes alone)."""
    groups, current, rows = [], [], 0
    for i, n in enumerate(lengths):
        if current and rows + n > max_rows:
            groups.append(current)
            current, rows = [], 0
        current.append(i)
        rows += n
    if current:
        groups.append(current)
    return groups


def draft_vocabulary(samples: Sequence[Sample], size: int, always: Sequence[int] = ()) -> torch.Tensor:
    """[size] target ids of the ``size`` most frequent response tokens (``always`` first),
    sorted by id: the head's truncated output vocabulary (``d2t``)."""
    counts = Counter(t for s in samples for t in s.response_ids)
    chosen = list(dict.fromkeys(list(always) + [t for t, _ in counts.most_common()]))[:size]
    return torch.tensor(sorted(chosen), dtype=torch.int64)


def coverage(samples: Sequence[Sample], d2t: torch.Tensor) -> float:
    """The share of response tokens the draft vocabulary can propose."""
    allowed = set(d2t.tolist())
    total = sum(len(s.response_ids) for s in samples)
    return sum(t in allowed for s in samples for t in s.response_ids) / max(1, total)
