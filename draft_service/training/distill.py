"""``specgrove distill``: train an EAGLE head for a target by self-distillation, end to end.

Stages (each cached in the work directory, so an interrupted run resumes where it stopped):

1. **prompts** -- built from templates and word lists (``prompts``), no downloads; a separate
   seed gives the held-out evaluation prompts.
2. **responses** -- the target answers stage-A prompts, then stage-B prompts built on the
   passages it wrote (``data.generate_responses``, through the gateway's step loop).
3. **features** -- one teacher-forced forward per sample records the target's hidden states at
   the feature layers and its top-k distributions (``data.capture``).
4. **vocabulary** -- the most frequent response tokens become the draft vocabulary (``d2t``).
5. **training** -- soft cross-entropy, AdamW, training-time test (``train``); checkpoints.
6. **evaluation** -- tau of the trained head on the held-out prompts (``evaluate``); the head
   (``config.json``, ``model.safetensors``) and ``report.json`` are written to the output.

``max_minutes`` budgets the whole run: generation may use up to ``GENERATION_SHARE`` of it,
training up to ``TRAINING_SHARE`` (cumulative), evaluation the rest. Everything derives from
``seed``: the same command on the same machine makes the same head.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from draft_service.drafters.eagle.config import EagleConfig
from draft_service.drafters.eagle.head import EagleHead, save_head
from draft_service.training import data, prompts
from draft_service.training.evaluate import acceptance
from draft_service.training.train import TrainConfig, train

GENERATION_SHARE = 0.45  # of max_minutes, for stages 1-2
TRAINING_SHARE = 0.92  # cumulative: training ends by then; evaluation takes the rest


@dataclass(frozen=True)
class DistillConfig:
    target: str = "smollm2-135m-instruct"
    out: str = "eagle-head"
    work: str = ".distill"
    max_minutes: float = 85.0
    prompts: int = 4000  # stage-A + stage-B prompts at most (time may stop generation first)
    max_new_tokens: int = 192
    feature_layers: tuple[int, ...] = ()  # () = low, middle and last layer
    draft_vocab: int = 6144
    top_k: int = 8
    eval_prompts: int = 30
    eval_tree: str = "8:4"
    eval_max_new_tokens: int = 96
    batch: int = 48  # sequences per decoding step while generating
    dtype: str = "auto"
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)


class Budget:
    def __init__(self, minutes: float) -> None:
        self.start, self.total = time.monotonic(), 60.0 * minutes

    def until(self, share: float) -> float:
        return self.start + share * self.total


def run_distill(cfg: DistillConfig, log=print) -> dict:
    from gateway.text import TextCodec
    from specgrove.modeling.loader import load_config, load_embedding, resolve_model

    budget = Budget(cfg.max_minutes)
    work, out = Path(cfg.work), Path(cfg.out)
    work.mkdir(parents=True, exist_ok=True)
    path = resolve_model(cfg.target)
    target_cfg = load_config(path)
    layers = cfg.feature_layers or default_layers(target_cfg.num_layers)
    codec = TextCodec(path)
    target, draft, run = _ports(str(path), cfg)
    encode = lambda ps: [(p.category, tuple(codec.encode_chat(list(p.messages)))) for p in ps]

    samples = _responses(cfg, work, target, draft, codec, encode, budget, log)
    dataset = _features(cfg, work, target, samples, layers, log)
    d2t = data.draft_vocabulary(samples, cfg.draft_vocab, always=target_cfg.eos_token_ids)
    covered = data.coverage(samples, d2t)
    log(f"draft vocabulary: {len(d2t)} tokens cover {covered:.1%} of response tokens")
    embed = load_embedding(path)
    head = EagleHead(EagleConfig.for_target(target_cfg, layers, len(d2t), cfg.target), embed, d2t)
    stats = _train(cfg, work, head, dataset, budget)
    eval_set = encode(_eval_prompts(cfg, samples, codec))
    from specgrove.config import parse_tree_option

    tau = acceptance(target, head, embed, run, eval_set, parse_tree_option(cfg.eval_tree),
                     cfg.eval_max_new_tokens)
    save_head(head, out)
    report = {"config": _jsonable(asdict(cfg)), "feature_layers": list(layers),
              "samples": len(samples), "tokens": int(dataset.starts[-1]),
              "response_tokens": sum(len(s.response_ids) for s in samples),
              "draft_vocab": len(d2t), "vocab_coverage": covered, "train": stats,
              "eval": {"prompts": len(eval_set), "tree": cfg.eval_tree, "tau": tau},
              "minutes": (time.monotonic() - budget.start) / 60}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    target.thread.shutdown()
    log(f"tau on {len(eval_set)} held-out prompts: {tau['overall']:.2f}; head written to {out}")
    return report


def default_layers(num_layers: int) -> tuple[int, ...]:
    """EAGLE-3's low, middle and high features: layer 2 (or 0), the middle, the last."""
    return tuple(sorted({min(2, num_layers - 1), num_layers // 2, num_layers - 1}))


def _ports(model: str, cfg: DistillConfig):
    from draft_service.drafters.ngram import NgramDrafter
    from draft_service.engine import DraftEngine
    from draft_service.local import LocalDraft
    from specgrove.config import ModelRunConfig
    from specgrove.kv import KVCacheConfig
    from specgrove.runner import load_runner
    from target_service.engine import TargetEngine
    from target_service.local import LocalTarget, TargetLimits

    run = ModelRunConfig(model, cfg.dtype, "cpu", "auto", KVCacheConfig(16, 8192))
    engine = TargetEngine(load_runner(run))
    target = LocalTarget(engine, cfg.target, cfg.dtype, TargetLimits(max_num_seqs=4096, max_tree_nodes=128))
    draft = LocalDraft(DraftEngine.of({"ngram": NgramDrafter()}, "ngram"), engine.vocab_size)
    return target, draft, replace(run, kv=KVCacheConfig(16, 4096))


def _responses(cfg, work: Path, target, draft, codec, encode, budget: Budget, log) -> list[data.Sample]:
    """Stage A then stage B, each cached as JSON lines."""
    a_count, b_count = prompts.split_count(cfg.prompts)
    stage_a = work / "samples_a.jsonl"
    passage_count = max(1, b_count // 6)
    if not stage_a.is_file():
        ps = prompts.passage_prompts(cfg.seed, passage_count) + prompts.seed_prompts(cfg.seed, a_count)
        data.save_samples(stage_a, _generate(cfg, target, draft, encode(ps), budget.until(GENERATION_SHARE * 0.6),
                                             "responses (stage A)"))
    samples_a = data.load_samples(stage_a)
    stage_b = work / "samples_b.jsonl"
    if not stage_b.is_file():
        passages = [codec.decode(s.response_ids) for s in samples_a[:passage_count]]
        ps = prompts.derived_prompts(cfg.seed, [p for p in passages if p.strip()] or ["(no passage)"], b_count)
        data.save_samples(stage_b, _generate(cfg, target, draft, encode(ps), budget.until(GENERATION_SHARE),
                                             "responses (stage B)"))
    samples = samples_a + data.load_samples(stage_b)
    log(f"{len(samples)} responses, {sum(len(s.response_ids) for s in samples)} tokens")
    return samples


def _generate(cfg, target, draft, encoded, deadline: float, what: str) -> list[data.Sample]:
    with tqdm(total=len(encoded) * cfg.max_new_tokens, desc=what, unit="tok", smoothing=0.1) as bar:
        return data.generate_responses(target, draft, encoded, cfg.max_new_tokens, cfg.seed, deadline,
                                       cfg.batch, bar.update)


def _features(cfg, work: Path, target, samples, layers, log) -> data.Dataset:
    directory = work / "dataset"
    if (directory / "dataset.json").is_file():
        return data.Dataset.load(directory)
    total = sum(len(s.tokens) for s in samples)
    with tqdm(total=total, desc="features", unit="tok") as bar:
        return data.capture(target.engine.runner, samples, layers, cfg.top_k, directory, progress=bar.update)


def _train(cfg, work: Path, head: EagleHead, dataset: data.Dataset, budget: Budget) -> dict:
    deadline = budget.until(TRAINING_SHARE)
    with tqdm(total=cfg.train.steps, desc="training", unit="step") as bar:
        def progress(step: int, stats: dict) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{stats['loss']:.3f}", top1=f"{stats['top1']:.2f}", refresh=False)
            bar.update(0)

        return train(head, dataset, cfg.train, work / "checkpoint.pt", deadline, progress)


def _eval_prompts(cfg, samples, codec) -> list[prompts.Prompt]:
    """Held out: other seeds than the training prompts, stage-B ones on training passages."""
    a, b = prompts.split_count(cfg.eval_prompts)
    passages = [codec.decode(s.response_ids) for s in samples[:50]]
    return prompts.seed_prompts(cfg.seed + 7919, a) + prompts.derived_prompts(cfg.seed + 7919, passages or ["x"], b)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
