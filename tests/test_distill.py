"""``specgrove distill`` end to end on a tiny model: data made in the test, a few hundred steps;
the loss falls and the trained head drafts better than the untrained one on held-out prompts."""
from __future__ import annotations

import json

import torch

from draft_service.drafters.eagle.config import EagleConfig
from draft_service.drafters.eagle.head import EagleHead
from draft_service.factory import DraftTarget, build_drafter
from draft_service.training import distill
from draft_service.training.evaluate import acceptance
from draft_service.training.train import TrainConfig
from gateway.text import TextCodec
from specgrove.config import parse_tree_option
from specgrove.modeling.loader import load_config, load_embedding


def test_distill_trains_a_head_that_beats_an_untrained_one(tiny_dirs, tmp_path):
    cfg = distill.DistillConfig(
        target=str(tiny_dirs["llama"]), out=str(tmp_path / "head"), work=str(tmp_path / "work"),
        max_minutes=5, prompts=240, max_new_tokens=32, feature_layers=(0, 1), draft_vocab=200,
        top_k=4, eval_prompts=16, eval_tree="1,1,1", eval_max_new_tokens=24, batch=32,
        dtype="float32", seed=3,
        train=TrainConfig(steps=400, batch=8, window=64, lr=3e-3, warmup=20, ttt_steps=2,
                          checkpoint_every=100))
    report = distill.run_distill(cfg, log=lambda *a: None)
    assert report["samples"] >= 200 and report["response_tokens"] > 5000
    stats = report["train"]
    assert stats["steps"] == 400 and stats["loss"] < 0.8 * stats["first_loss"]
    trained_tau = report["eval"]["tau"]["overall"]

    # The same evaluation with an untrained head (same vocabulary, fresh weights).
    head_cfg = EagleConfig.load(tmp_path / "head")
    target, _, run = distill._ports(str(tiny_dirs["llama"]), cfg)
    codec = TextCodec(tiny_dirs["llama"])
    from draft_service.training.data import load_samples
    samples = load_samples(tmp_path / "work" / "samples_a.jsonl")
    eval_set = [(p.category, tuple(codec.encode_chat(list(p.messages))))
                for p in distill._eval_prompts(cfg, samples, codec)]
    from safetensors.torch import load_file
    d2t = load_file(str(tmp_path / "head" / "model.safetensors"))["d2t"]
    torch.manual_seed(0)
    untrained = EagleHead(head_cfg, load_embedding(tiny_dirs["llama"]), d2t)
    untrained_tau = acceptance(target, untrained, load_embedding(tiny_dirs["llama"]), run, eval_set,
                               parse_tree_option("1,1,1"), 24)["overall"]
    # A random two-layer target is hard to emulate from a few thousand tokens: the margin is
    # small, but the run is fully seeded, and an untrained head is accepted almost never.
    assert trained_tau > untrained_tau + 0.02, (trained_tau, untrained_tau)

    # The written head loads as a drafter (the shape the draft service reads).
    drafter = build_drafter(f"eagle:{tmp_path / 'head'}", DraftTarget(str(tiny_dirs["llama"])), run)
    assert drafter.feature_layers == tuple(report["feature_layers"])
    assert json.loads((tmp_path / "head" / "report.json").read_text())["eval"]["tau"]["overall"] == trained_tau


def test_default_feature_layers_are_low_middle_high():
    assert distill.default_layers(30) == (2, 15, 29)
    assert distill.default_layers(2) == (1,)  # tiny models: min(2, 1), 1 and 1


def test_training_resumes_from_its_checkpoint(tmp_path, tiny_dirs):
    """An interrupted run (the deadline) continues from the step it checkpointed."""
    import time

    from draft_service.training import data
    from draft_service.training.train import train

    from specgrove.config import ModelRunConfig
    from specgrove.kv import KVCacheConfig
    from specgrove.runner import load_runner

    runner = load_runner(ModelRunConfig(str(tiny_dirs["llama"]), "float32", "cpu", "torch", KVCacheConfig(16, 256)))
    samples = [data.Sample("chat", (1, 5, 6, 7), tuple(range(10, 40))) for _ in range(4)]
    dataset = data.capture(runner, samples, (0, 1), 4, tmp_path / "ds")
    cfg = EagleConfig.for_target(load_config(tiny_dirs["llama"]), (0, 1), 64, "tiny")
    make = lambda: EagleHead(cfg, load_embedding(tiny_dirs["llama"]), torch.arange(64))
    ckpt = tmp_path / "ckpt.pt"
    first = train(make(), dataset, TrainConfig(steps=40, batch=2, window=16, checkpoint_every=5),
                  ckpt, deadline=time.monotonic() - 1)  # stops before its first step
    assert first["steps"] == 0
    partial = train(make(), dataset, TrainConfig(steps=20, batch=2, window=16, checkpoint_every=5),
                    ckpt, deadline=time.monotonic() + 60)
    assert partial["steps"] == 20
    ran = []
    resumed = train(make(), dataset, TrainConfig(steps=30, batch=2, window=16, checkpoint_every=5),
                    ckpt, deadline=time.monotonic() + 60, progress=lambda step, stats: ran.append(step))
    assert resumed["steps"] == 30 and ran == list(range(21, 31))  # ten more on top of twenty
