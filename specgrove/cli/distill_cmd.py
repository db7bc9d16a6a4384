"""``specgrove distill``: options -> ``draft_service.training.distill.run_distill``."""
from __future__ import annotations

import click


def run_distill_command(target: str, out: str, work: str | None, max_minutes: float, prompts: int,
                        max_new_tokens: int, feature_layers: str, draft_vocab: int, steps: int,
                        train_batch: int, window: int, lr: float, ttt_steps: int, dtype: str,
                        seed: int) -> None:
    import torch

    from draft_service.training.distill import DistillConfig, run_distill
    from draft_service.training.train import TrainConfig

    from pathlib import Path

    from specgrove.model_paths import cache_dir

    torch.manual_seed(seed)
    work = work or str(cache_dir() / "distill" / Path(out).resolve().name)
    layers = tuple(int(x) for x in feature_layers.split(",") if x.strip())
    cfg = DistillConfig(
        target=target, out=out, work=work, max_minutes=max_minutes, prompts=prompts,
        max_new_tokens=max_new_tokens, feature_layers=layers, draft_vocab=draft_vocab, dtype=dtype,
        seed=seed, train=TrainConfig(steps=steps, batch=train_batch, window=window, lr=lr,
                                     ttt_steps=ttt_steps, seed=seed))
    report = run_distill(cfg, log=lambda msg: click.echo(msg, err=True))
    click.echo(f"tau {report['eval']['tau']['overall']:.2f} on {report['eval']['prompts']} held-out "
               f"prompts; head in {out} ({report['minutes']:.0f} min)")
