"""Paged KV bookkeeping: reservations, path commits, rollback, and no leaks."""
from __future__ import annotations

import random

import pytest
import torch

from specgrove.kv import BlockManager, KVCacheExhausted
from specgrove.types import PrefillRequest, TreeBudget, VerifyItem
from specgrove.tree import TokenTree
from tests.helpers import draft_engine, generate, request, target_engine


def test_reserve_commit_path_and_trim():
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.add_sequence(1)
    bm.reserve(1, 6)
    bm.commit(1, 6)
    assert bm.committed_len(1) == 6 and len(bm.block_table(1)) == 2
    bm.reserve(1, 7)  # a 7-node tree at positions 6..12
    assert len(bm.block_table(1)) == 4
    # Accept root + nodes 2 and 5: node 2 -> position 7, node 5 -> position 8.
    plan = bm.commit(1, 3, [0, 2, 5])
    slots = lambda positions: [bm.block_table(1)[p // 4] * 4 + p % 4 for p in positions]
    assert plan.dst_slots == slots([7, 8])
    assert bm.committed_len(1) == 9 and len(bm.block_table(1)) == 3  # block 4 returned
    assert bm.num_free_blocks == 5


def test_exhaustion_is_atomic_and_rollback_frees():
    bm = BlockManager(num_blocks=3, block_size=2)
    bm.add_sequence(1)
    with pytest.raises(KVCacheExhausted):
        bm.reserve(1, 7)
    assert bm.num_free_blocks == 3 and bm.block_table(1) == []
    bm.reserve(1, 5)
    bm.rollback(1)
    assert bm.num_free_blocks == 3


def test_commit_copies_apply_to_every_layer(tiny_dirs):
    engine = target_engine(tiny_dirs["llama"], block_size=2)
    runner = engine.runner
    first = engine.prefill([PrefillRequest(0, (5, 6, 7))])[0].first_token
    tree = TokenTree((first, 40, 41, 42), (-1, 0, 0, 2))
    runner.blocks.reserve(0, len(tree))
    slots = runner.blocks.slots(0, 3, 7)
    cache = runner.executor.kv_cache
    flat = cache.view(cache.shape[0], 2, -1, *cache.shape[4:])
    before = flat[:, :, slots].clone()
    runner.commit_many([(0, 3, [0, 2, 3])])
    after = flat[:, :, runner.blocks.slots(0, 3, 6)]
    torch.testing.assert_close(after, before[:, :, [0, 2, 3]])


def test_many_cycles_with_early_release_return_every_block(tiny_dirs):
    engine = target_engine(tiny_dirs["llama"], block_size=3, num_blocks=200, shuffle_seed=1)
    drafts = draft_engine(tiny_dirs["draft"], block_size=3, num_blocks=200)
    start = engine.runner.blocks.num_free_blocks
    draft_start = drafts.registry.resolve("model").drafter.runner.blocks.num_free_blocks
    rng = random.Random(0)
    for cycle in range(6):
        reqs = [
            request(tuple(rng.randrange(320) for _ in range(rng.randint(1, 12))),
                    max_tokens=rng.randint(1, 14), budget=TreeBudget(branching=(2, 2)),
                    drafter=rng.choice(["model", "ngram"]))
            for _ in range(4)
        ]
        outs = generate(engine, drafts, reqs)
        assert all(o.error is None for o in outs)
        assert engine.runner.blocks.num_free_blocks == start
        assert engine.num_sequences == 0 and drafts.num_sequences == 0
    assert drafts.registry.resolve("model").drafter.runner.blocks.num_free_blocks == draft_start
    # Released mid-generation (as a cancelled request would be): blocks come back too.
    pending = engine.prefill([PrefillRequest(99, (1, 2, 3, 4, 5))])[0].first_token
    engine.verify([VerifyItem(99, TokenTree((pending, 7), (-1, 0)))])
    engine.release(99)
    assert engine.runner.blocks.num_free_blocks == start


def test_exhausted_verify_rolls_back_and_keeps_serving(tiny_dirs):
    engine = target_engine(tiny_dirs["llama"], block_size=2, num_blocks=6)
    a = engine.prefill([PrefillRequest(1, tuple(range(3, 10)))])[0].first_token  # 4 blocks
    free = engine.runner.blocks.num_free_blocks
    wide = TokenTree((a,) + tuple(range(20, 30)), (-1,) + (0,) * 10)
    with pytest.raises(KVCacheExhausted):
        engine.verify([VerifyItem(1, wide)])
    assert engine.runner.blocks.num_free_blocks == free
    res = engine.verify([VerifyItem(1, TokenTree.root_only(a))])[0]
    assert len(res.new_tokens) == 1


def test_empty_batches_are_no_ops(tiny_dirs):
    engine = target_engine(tiny_dirs["llama"])
    free = engine.runner.blocks.num_free_blocks
    assert engine.prefill([]) == [] and engine.verify([]) == []
    assert engine.runner.blocks.num_free_blocks == free
