"""Tree attention: every node sees exactly its root path (kernel reference and whole model)."""
from __future__ import annotations

import random

import torch

from specgrove.kernels.tree_attention import tree_attention_ref
from specgrove.runner import ForwardItem
from specgrove.tree import TokenTree
from tests.helpers import runner


def _random_tree(n: int, rng: random.Random) -> TokenTree:
    parents = [-1] + [rng.randrange(i) for i in range(1, n)]
    return TokenTree(tuple(range(100, 100 + n)), tuple(parents))


def test_ref_tree_attention_equals_causal_attention_over_root_path():
    rng = random.Random(0)
    hq, hkv, d, bs = 4, 2, 8, 3
    trees = [_random_tree(n, rng) for n in (1, 5, 9)]
    prefix = [4, 0, 7]
    num_blocks = 40
    k_cache = torch.randn(num_blocks, bs, hkv, d, dtype=torch.float64)
    v_cache = torch.randn(num_blocks, bs, hkv, d, dtype=torch.float64)
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0))
    tables, used = [], 0
    for L, t in zip(prefix, trees):
        need = -(-(L + len(t)) // bs)
        tables.append(perm[used : used + need].tolist() + [0] * (8 - need))
        used += need
    q = torch.randn(sum(len(t) for t in trees), hq, d, dtype=torch.float64)
    width = max(len(t) for t in trees)
    mask = torch.zeros(q.shape[0], width, dtype=torch.bool)
    row = 0
    for t in trees:
        m = torch.tensor(t.ancestor_mask())
        mask[row : row + len(t), : len(t)] = m
        row += len(t)
    out = tree_attention_ref(
        q, k_cache, v_cache, torch.tensor(tables, dtype=torch.int32),
        torch.tensor([L + len(t) for L, t in zip(prefix, trees)], dtype=torch.int32),
        torch.tensor([0, 1, 6, 15], dtype=torch.int32), mask,
        torch.tensor([len(t) for t in trees], dtype=torch.int32), d**-0.5,
    )
    row = 0
    for b, (L, t) in enumerate(zip(prefix, trees)):
        for node in range(len(t)):
            keys = list(range(L)) + [L + j for j in t.path_to(node)]
            slots = [tables[b][p // bs] * bs + p % bs for p in keys]
            k = k_cache.view(-1, hkv, d)[slots].repeat_interleave(hq // hkv, dim=1)
            v = v_cache.view(-1, hkv, d)[slots].repeat_interleave(hq // hkv, dim=1)
            scores = torch.einsum("hd,khd->hk", q[row + node], k) * d**-0.5
            want = torch.einsum("hk,khd->hd", scores.softmax(-1), v)
            torch.testing.assert_close(out[row + node], want)
        row += len(t)


def test_model_tree_logits_equal_sequential_decoding_of_each_path(tiny_dirs):
    """One verify forward over a tree == running each node's root path token by token."""
    prompt = [3, 14, 15, 92, 65]
    tree = TokenTree((7, 11, 12, 13, 21, 22, 31), (-1, 0, 0, 0, 1, 1, 4))
    r = runner(tiny_dirs["llama"], block_size=2, shuffle_seed=4)
    r.blocks.add_sequence(0)
    r.forward([ForwardItem(0, prompt, range(5))])
    r.commit_many([(0, 5, None)])
    tree_logits = r.forward([ForwardItem(0, tree.token_ids, tree.positions(5),
                                         tree_mask=tree.ancestor_mask(), all_logits=True)])[0]
    for node in range(len(tree)):
        ref = runner(tiny_dirs["llama"], block_size=2)
        ref.blocks.add_sequence(0)
        path = [tree.token_ids[i] for i in tree.path_to(node)]
        tokens = prompt + path
        want = ref.forward([ForwardItem(0, tokens, range(len(tokens)))])[0][-1]
        torch.testing.assert_close(tree_logits[node], want, atol=1e-10, rtol=0)
