"""What the benchmarks share: prompt files, run metadata, and the step loop in process.

Every benchmark that decodes runs the gateway's orchestrator (over the in-process ports, or over
gRPC), the same loop users get; ``step_clock`` records the duration of each of its steps.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent


def load_prompts(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a prompts JSONL file: ``{"id", "category", "prompt"}``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def chat_ids(codec, text: str) -> list[int]:
    """A user message through the model's chat template, assistant turn opened."""
    return codec.encode_chat([{"role": "user", "content": text}])


def cpu_model() -> str:
    """The CPU's model name and the matrix / bf16 features that change our kernels' numbers
    (machines with the same core count differ: an EPYC without AMX, a Xeon with it)."""
    from specgrove.kernels.cpu_build import cpu_flags

    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    features = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni") if f in cpu_flags()]
    return f"{name} ({', '.join(features)})" if features else name


def meta(**extra) -> dict:
    """Where and on what a result was measured."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=REPO).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                    text=True, cwd=REPO).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    return {"commit": commit + ("+dirty" if dirty else ""), "machine": platform.platform(),
            "processor": platform.processor() or cpu_model(), "cpus": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, **extra}


def step_clock():
    """Gateway metrics that also keep every step's duration in ``.step_samples`` (seconds)."""
    from gateway.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    metrics.step_samples = []
    histogram = metrics.step_time

    class Recording:
        @staticmethod
        def observe(seconds: float) -> None:
            metrics.step_samples.append(seconds)
            histogram.observe(seconds)

    metrics.step_time = Recording()
    return metrics


def local_ports(model: str, dtype: str = "float32", kv_blocks: int = 1024, drafters=None,
                default: str = "ngram"):
    """The target and draft engines of ``model`` as in-process ports, plus its text codec.

    ``drafters``: name -> spec (``ngram``, ``model:PATH``); default ``{"ngram": "ngram"}``.
    """
    from draft_service.engine import DraftEngine
    from draft_service.factory import DraftTarget, build_drafter
    from draft_service.local import LocalDraft
    from gateway.text import TextCodec
    from specgrove.config import ModelRunConfig
    from specgrove.kv import KVCacheConfig
    from specgrove.modeling.loader import resolve_model
    from specgrove.runner import load_runner
    from target_service.engine import TargetEngine
    from target_service.local import LocalTarget, TargetLimits

    path = resolve_model(model)
    run = ModelRunConfig(str(path), dtype, "cpu", "auto", KVCacheConfig(16, kv_blocks))
    engine = TargetEngine(load_runner(run))
    specs = drafters or {"ngram": "ngram"}
    built = {name: build_drafter(spec, DraftTarget(str(path)), run) for name, spec in specs.items()}
    target = LocalTarget(engine, model, dtype, TargetLimits(max_tree_nodes=128))
    draft = LocalDraft(DraftEngine.of(built, default), engine.vocab_size)
    return target, draft, TextCodec(path)


def decode_tps(ports, prompt, n: int, tree: str | None) -> tuple[float, float, list[int]]:
    """One greedy request of exactly ``n`` new tokens (EOS ignored) through the step loop over
    in-process ``ports``: (tokens/s, tau, token ids). ``tree``: the ``eagle`` drafter's budget
    (a ``--tree`` option string), or None for plain decoding."""
    from gateway.job import JobSpec
    from gateway.offline import complete
    from specgrove.config import parse_tree_option
    from specgrove.sampling_params import SamplingParams
    from specgrove.types import TreeBudget

    budget = parse_tree_option(tree) if tree else TreeBudget.off()
    spec = JobSpec(tuple(prompt), n, SamplingParams(), drafter="eagle" if tree else "", budget=budget,
                   ignore_eos=True)
    start = time.perf_counter()
    (out,) = asyncio.run(complete(*ports, [spec]))
    return n / (time.perf_counter() - start), out.stats.mean_acceptance_length, out.token_ids


def child_pid(parent: int, role: str) -> int | None:
    """The pid of ``specgrove up``'s child running ``specgrove.cli ROLE`` (target / draft /
    gateway), or None while there is none (e.g. being restarted)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and role.encode() in argv and b"specgrove.cli" in argv:
            return int(entry.name)
    return None
