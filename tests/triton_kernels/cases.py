"""Random inputs for the Triton kernel tests: odd prefix lengths, shuffled physical blocks, and
cache slots that hold no key of any sequence filled with NaN, so a kernel that reads past a
sequence's keys fails loudly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from specgrove.kernels import tree_attention as attn

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REPO = Path(__file__).resolve().parents[2]
# Error bound against an fp32 computation on the same (exactly upcast) inputs: the kernels round
# the softmax weights to the input dtype before the P @ V product, as FlashAttention does.
ATOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


# ----------------------------------------------------------------------------- input builders


@dataclass(frozen=True)
class Seq:
    """One sequence of a batch: ``prefix`` cached keys, then a window of new keys."""

    prefix: int
    q_len: int  # queries: the last q_len keys of the window
    parents: tuple[int, ...] | None = None  # tree window (len >= q_len); None: causal

    @property
    def window(self) -> int:
        return len(self.parents) if self.parents is not None else self.q_len


def tree_parents(shape: str, n: int, gen: torch.Generator) -> tuple[int, ...]:
    """Parent array of an n-node tree (parents[i] < i): chain, wide, deep or random."""
    def pick(lo: int, hi: int) -> int:  # uniform in [lo, hi]
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    choose = {
        "chain": lambda i: i - 1,
        "wide": lambda i: 0,
        "deep": lambda i: pick(max(0, i - 2), i - 1),
        "random": lambda i: pick(0, i - 1),
    }[shape]
    return (-1,) + tuple(choose(i) for i in range(1, n))


def ancestor_mask(parents: tuple[int, ...]) -> torch.Tensor:  # [n, n] bool, ancestor-or-self
    n = len(parents)
    mask = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        mask[i] |= mask[parents[i]]
    return mask


def paged_cache(kv_lens, page, hkv, d, dtype, gen):
    """Random K/V for each sequence's keys in shuffled pages; all remaining slots hold NaN.

    Returns k_cache, v_cache [num_blocks, page, hkv, d] and block_tables [B, max_blocks] int32
    whose unused entries point at a NaN block.
    """
    counts = [-(-n // page) for n in kv_lens]
    num_blocks = sum(counts) + 2
    ids = torch.randperm(num_blocks, generator=gen)
    tables = torch.full((len(kv_lens), max(counts, default=0) + 1), int(ids[-1]), dtype=torch.int32)
    used = torch.zeros(num_blocks * page, dtype=torch.bool)
    start = 0
    for b, (n, count) in enumerate(zip(kv_lens, counts)):
        tables[b, :count] = ids[start : start + count].int()
        pos = torch.arange(n)
        used[tables[b, pos // page].long() * page + pos % page] = True
        start += count
    caches = []
    for _ in range(2):
        flat = torch.randn(num_blocks * page, hkv, d, generator=gen)
        flat[~used] = float("nan")
        caches.append(flat.view(num_blocks, page, hkv, d).to(dtype))
    return caches[0], caches[1], tables


def make_batch(seqs, *, page, hq, hkv, d, dtype, gen, device=DEVICE):
    """Keyword arguments for tree_attention(_ref) over ``seqs`` (all trees or all causal)."""
    tree = seqs[0].parents is not None
    kv_lens = [s.prefix + s.window for s in seqs]
    k_cache, v_cache, tables = paged_cache(kv_lens, page, hkv, d, dtype, gen)
    q_lens = torch.tensor([s.q_len for s in seqs])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), q_lens.cumsum(0)])
    tree_mask = tree_lens = None
    if tree:
        # Columns past a sequence's window get random bits: the kernel must ignore them.
        width = max(s.window for s in seqs) + 3
        tree_mask = torch.rand(int(cu[-1]), width, generator=gen) < 0.5
        for s, row in zip(seqs, cu.tolist()):
            nodes = ancestor_mask(s.parents)[s.window - s.q_len :]  # the queried (last) nodes
            tree_mask[row : row + s.q_len, : s.window] = nodes
        tree_lens = torch.tensor([s.window for s in seqs], dtype=torch.int32)
    batch = dict(
        q=torch.randn(int(cu[-1]), hq, d, generator=gen).to(dtype),
        k_cache=k_cache, v_cache=v_cache, block_tables=tables,
        kv_lens=torch.tensor(kv_lens, dtype=torch.int32), cu_seqlens_q=cu.int(),
        tree_mask=tree_mask, tree_lens=tree_lens, scale=d**-0.5,
    )
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def assert_matches_reference(batch) -> None:
    """Kernel vs the reference run in fp32 on the same inputs (exact for fp32 inputs)."""
    out = attn.tree_attention(**batch)
    upcast = {k: v.float() if torch.is_floating_point(v) else v for k, v in batch.items()
              if isinstance(v, torch.Tensor)}
    ref = attn.tree_attention_ref(**{**batch, **upcast})
    assert out.dtype == batch["q"].dtype and out.shape == batch["q"].shape
    torch.testing.assert_close(out.float(), ref, atol=ATOL[out.dtype], rtol=ATOL[out.dtype])


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def path_commits(prefix_lens, tree_size, page, gen):
    """(src, dst, num_slots) of accepted-path commits: node a_i (a_i >= i) moves to L + i.

    Sequence b's logical positions map to physical slots through shuffled blocks; its tree sits at
    positions L .. L+N-1 and the accepted nodes 1 <= a_1 < ... < a_k move to L+1 .. L+k, so a
    destination is often the source of a later copy.
    """
    counts = [-(-(n + tree_size) // page) for n in prefix_lens]
    ids = torch.randperm(sum(counts), generator=gen)
    src, dst, start = [], [], 0
    for n, count in zip(prefix_lens, counts):
        blocks = ids[start : start + count]
        start += count
        slot = lambda pos: int(blocks[pos // page]) * page + pos % page  # noqa: E731
        picked = torch.randperm(tree_size - 1, generator=gen)[: tree_size // 2] + 1
        for i, node in enumerate(sorted(picked.tolist()), start=1):
            src.append(slot(n + node))
            dst.append(slot(n + i))
    as_slots = lambda x: torch.tensor(x, dtype=torch.int64, device=DEVICE)  # noqa: E731
    return as_slots(src), as_slots(dst), sum(counts) * page
