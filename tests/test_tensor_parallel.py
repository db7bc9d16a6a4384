"""Tensor-parallel target: TP=2 (two processes, gloo on CPU) against the single-rank runner.

Shards reassemble to the checkpoint in both weight layouts; TP=2 logits equal TP=1 logits
through prefill, decode, a tree verify and its commit copies; greedy speculative generation is
token-for-token the same and leaks no block; a killed worker fails the next call naming its
rank; workers exit when rank 0 dies; shapes that do not divide are refused before any start.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from specgrove.kernels.backend import select_backend
from specgrove.modeling.config import ModelConfig
from specgrove.modeling.loader import build_model
from specgrove.modeling.parallel import ColumnParallelLinear, TPGroup
from specgrove.config import ModelRunConfig
from specgrove.kv import KVCacheConfig
from specgrove.runner import ForwardItem
from specgrove.tree import TokenTree
from specgrove.types import PrefillRequest, TreeBudget, VerifyItem
from target_service.engine import TargetEngine
from target_service.tp import TPShapeError, TPWorkerDied, check_tp_shapes, start_tp_runner
from tests.helpers import CPU, draft_engine, generate, request

KV = KVCacheConfig(block_size=4, num_blocks=128, shuffle_seed=3)
PROMPTS = [(5, 6, 7, 8, 5, 6, 7, 8, 5, 6), (9, 10, 11), (42,)]


def _start(path: Path, tp_size: int, transposed: bool | None = None, timeout_s: float = 30.0):
    run = ModelRunConfig(str(path), "float64", "cpu", "torch", KV, transposed)
    return start_tp_runner(run, tp_size, timeout_s)


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def start_tp():
    """Start TP=2 runners; close them all (and check their workers are gone) afterwards.

    Rank 0 (this process) takes its share of the cores, as the workers do: two ranks with
    all cores each fight over them, which makes every collective wait.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))
    runners = []

    def start(path: Path, **kw):
        runners.append(_start(path, 2, **kw))
        return runners[-1]

    yield start
    torch.set_num_threads(threads)
    for runner in runners:
        pids = runner.executor.worker_pids.values()
        runner.close()
        assert all(_gone(pid) for pid in pids)


# --- shards --------------------------------------------------------------------------------
def _as_out_in(param: torch.Tensor, transposed: bool) -> torch.Tensor:
    return param.t() if transposed and param.dim() == 2 else param


def _reassemble(name: str, module, parts: list[torch.Tensor]) -> torch.Tensor:
    """The full [out, in] (or [out]) tensor that per-rank shards were cut from."""
    if isinstance(module, ColumnParallelLinear):  # each rank: [sub_0 shard, sub_1 shard, ...]
        split = [p.split(module.local_sizes) for p in parts]
        return torch.cat([torch.cat(pieces) for pieces in zip(*split)])
    if name.endswith(("o_proj.weight", "down_proj.weight")):  # row-parallel: input features
        return torch.cat(parts, dim=1)
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):  # vocabulary rows, padded
        return torch.cat(parts)[: module.vocab_size]
    assert all(torch.equal(p, parts[0]) for p in parts)  # replicated (norms)
    return parts[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # tied embeddings / QKV bias
@pytest.mark.parametrize("transposed", [True, False])
def test_shards_reassemble_to_the_full_weights(tiny_dirs, arch, transposed):
    load = lambda tp: build_model(tiny_dirs[arch], torch.float64, CPU,
                                  select_backend("torch", CPU), tp=tp, transposed=transposed)
    full = load(TPGroup())
    shards = [load(TPGroup(rank, 2)) for rank in range(2)]
    for name, param in full.named_parameters():
        module = shards[0].get_submodule(name.rsplit(".", 1)[0])
        parts = [_as_out_in(dict(s.named_parameters())[name], transposed) for s in shards]
        assert torch.equal(_reassemble(name, module, parts), _as_out_in(param, transposed)), name


# --- logits --------------------------------------------------------------------------------
def _script():
    """Steps of (forward items, commits) covering prefill, decode, a tree verify, copies."""
    tree = TokenTree((30, 31, 32, 33, 34), (-1, 0, 0, 1, 2))
    yield ([ForwardItem(0, PROMPTS[0], range(10), all_logits=True),
            ForwardItem(1, tuple(range(50, 63)), range(13), all_logits=True)],
           [(0, 10, None), (1, 13, None)])
    yield ([ForwardItem(0, (7,), (10,), all_logits=True), ForwardItem(1, (8,), (13,))],
           [(0, 1, None), (1, 1, None)])
    yield ([ForwardItem(0, tree.token_ids, tree.positions(11), tree_mask=tree.ancestor_mask(),
                        all_logits=True), ForwardItem(1, (9,), (14,), all_logits=True)],
           [(0, 3, [0, 2, 4]), (1, 1, [0])])  # moves nodes 2 and 4 down: slot copies
    yield ([ForwardItem(0, (35,), (14,)), ForwardItem(1, (10,), (15,))], [])


@pytest.mark.parametrize("arch,transposed", [("llama", True), ("qwen2", False)])
def test_tp2_logits_equal_tp1(tiny_dirs, start_tp, arch, transposed):
    one = _start(tiny_dirs[arch], 1, transposed)
    two = start_tp(tiny_dirs[arch], transposed=transposed)
    for runner in (one, two):
        runner.blocks.add_sequence(0)
        runner.blocks.add_sequence(1)
    for items, commits in _script():
        want, got = one.forward(items), two.forward(items)
        for a, b in zip(want, got):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
        if commits:
            one.commit_many(commits)
            two.commit_many(commits)


# --- generation ----------------------------------------------------------------------------
BUDGETS = [
    ("", TreeBudget()),  # speculation off
    ("model", TreeBudget(branching=(3, 2, 1))),
    ("model", TreeBudget(max_nodes=8, max_depth=4, top_k=3)),
    ("ngram", TreeBudget(max_nodes=8, max_depth=4)),
]


def test_greedy_generation_over_tp2_equals_tp1(tiny_dirs, start_tp):
    one = TargetEngine(_start(tiny_dirs["llama"], 1))
    two = TargetEngine(start_tp(tiny_dirs["llama"]))
    drafts = draft_engine(tiny_dirs["draft"])
    free = two.runner.blocks.num_free_blocks
    for i, (drafter, budget) in enumerate(BUDGETS):
        reqs = [request(p, 16, budget=budget, drafter=drafter) for p in PROMPTS]
        want = generate(one, drafts, reqs)
        got = generate(two, drafts, reqs)
        assert [o.token_ids for o in got] == [o.token_ids for o in want], (drafter, budget)
        if drafter == "model":
            assert all(o.stats.drafted_tokens > 0 for o in got)
    assert two.runner.blocks.num_free_blocks == free


# --- failures ------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["at_once", "after_the_watchdog"])
def test_killed_worker_fails_the_next_call_naming_the_rank(tiny_dirs, start_tp, call):
    """At once: the step's collective breaks. Later: the watchdog has recorded the death."""
    runner = start_tp(tiny_dirs["llama"])
    engine = TargetEngine(runner)
    free = runner.blocks.num_free_blocks
    pending = engine.prefill([PrefillRequest(0, PROMPTS[0])])[0].first_token
    tp = runner.executor
    os.kill(tp.worker_pids[1], signal.SIGKILL)
    if call == "after_the_watchdog":
        deadline = time.monotonic() + 2.0
        while tp.failure is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(tp.failure, TPWorkerDied) and tp.failure.rank == 1
    start = time.monotonic()
    with pytest.raises(TPWorkerDied, match=r"tensor-parallel rank 1 exited with code -9"):
        engine.verify([VerifyItem(0, TokenTree.chain((pending, 5, 6)))])
    assert time.monotonic() - start < 5.0
    start = time.monotonic()  # the group stays down: every later call fails at once
    with pytest.raises(TPWorkerDied, match="rank 1"):
        engine.prefill([PrefillRequest(1, PROMPTS[1])])
    assert time.monotonic() - start < 0.5
    assert tp.failure is not None and not engine.has_sequence(1)
    engine.release(0)
    assert runner.blocks.num_free_blocks == free


def test_idle_workers_outlive_the_collective_timeout(tiny_dirs, start_tp):
    """Heartbeats keep a worker's wait for its next message inside the group timeout."""
    runner = start_tp(tiny_dirs["llama"], timeout_s=8.0)
    runner.blocks.add_sequence(0)
    item = ForwardItem(0, PROMPTS[0], range(10))
    runner.forward([item])
    time.sleep(10.0)
    runner.blocks.rollback(0)
    runner.forward([item])
    assert runner.executor.failure is None


RANK0 = """
import sys, time
from specgrove.config import ModelRunConfig
from specgrove.kv import KVCacheConfig
from target_service.tp import start_tp_runner
run = ModelRunConfig(sys.argv[1], "float64", "cpu", "torch", KVCacheConfig(4, 64))
runner = start_tp_runner(run, 2, 30.0)
print(runner.executor.worker_pids[1], flush=True)
time.sleep(120)
"""


def test_workers_exit_when_rank0_dies(tiny_dirs):
    rank0 = subprocess.Popen([sys.executable, "-c", RANK0, str(tiny_dirs["llama"])],
                             stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(rank0.stdout.readline())
        rank0.kill()
        rank0.wait()
        deadline = time.monotonic() + 5.0
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(worker)
    finally:
        rank0.kill()
        rank0.wait()
        if worker is not None and not _gone(worker):
            os.kill(worker, signal.SIGKILL)


def test_refuses_heads_that_do_not_divide(tmp_path):
    LlamaConfig(vocab_size=320, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                num_attention_heads=6, num_key_value_heads=3).save_pretrained(tmp_path)
    with pytest.raises(TPShapeError, match=r"KV heads \(num_key_value_heads\) = 3 is not "
                                           r"divisible by 2$"):
        _start(tmp_path, 2)
    with pytest.raises(TPShapeError, match=r"attention heads \(num_attention_heads\) = 6; "
                                           r"KV heads \(num_key_value_heads\) = 3 are not"):
        _start(tmp_path, 4)


def test_refuses_smollm2_shapes_over_two_ranks():
    """The embedded SmolLM2-135M: 9 query heads, 3 KV heads."""
    smollm2 = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    with pytest.raises(TPShapeError, match=r"attention heads \(num_attention_heads\) = 9; KV "
                                           r"heads \(num_key_value_heads\) = 3 are not divisible"):
        check_tp_shapes(ModelConfig.from_hf(smollm2), 2)
    check_tp_shapes(ModelConfig.from_hf(smollm2), 3)
