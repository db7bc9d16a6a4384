"""Triton kernels against their plain-torch references (DESIGN "Testing", Conventions 3).

Without CUDA the kernels run under Triton's interpreter (numpy on the CPU), so the CPU cases use
small shapes; the ``gpu`` cases run the compiled kernels at serving shapes. Every case builds
fresh random inputs: odd prefix lengths, shuffled physical blocks, and cache slots that hold no
key of any sequence filled with NaN, so a kernel that reads past a sequence's keys fails loudly.
"""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads this when it is first imported (its own @jit library) and when each kernel is
    # decorated: it has to be set before anything imports triton. tests/conftest.py should set it
    # too, as other test modules import the kernels (through kernels.backend) before this one.
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from kernels import paged_kv as paged  # noqa: E402
from kernels import tree_attention as attn  # noqa: E402

# Without CUDA the kernels can only run interpreted; that needs Triton's library interpreted too.
INTERPRETER_MISSED = not torch.cuda.is_available() and not isinstance(tl.max, InterpretedFunction)


@pytest.fixture(autouse=True)
def _triton_runnable():
    if INTERPRETER_MISSED:
        pytest.fail(
            "triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run on "
            "this CPU-only machine: set the variable in tests/conftest.py before any import of "
            "triton or kernels",
            pytrace=False,
        )


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REPO = Path(__file__).resolve().parent.parent
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


# ----------------------------------------------------------------------------- tree attention

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tree_batch(gen) -> list[Seq]:
    return [
        Seq(37, 5, tree_parents("chain", 5, gen)),
        Seq(0, 1, (-1,)),  # single node, no prefix: plain decoding of a first token
        Seq(19, 8, tree_parents("wide", 8, gen)),
        Seq(5, 4, tree_parents("random", 11, gen)),  # window longer than the queries
        Seq(70, 0, tree_parents("chain", 3, gen)),  # no queries this step
        Seq(3, 7, tree_parents("deep", 7, gen)),
    ]


def causal_batch(gen) -> list[Seq]:
    return [Seq(0, 9), Seq(21, 6), Seq(50, 1), Seq(13, 0), Seq(33, 1), Seq(1, 17)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", [1, 16, 32])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (6, 2)])  # GQA groups 1 and 3 (not a power of two)
@pytest.mark.parametrize("make_seqs", [tree_batch, causal_batch], ids=["tree", "causal"])
def test_tree_attention_matches_reference(dtype, page, hq, hkv, make_seqs):
    gen = torch.Generator().manual_seed(page * 100 + hq)
    batch = make_batch(make_seqs(gen), page=page, hq=hq, hkv=hkv, d=32, dtype=dtype, gen=gen)
    assert_matches_reference(batch)


@pytest.mark.parametrize("hq,hkv", [(1, 1), (4, 1), (16, 2)])
@pytest.mark.parametrize("d", [16, 24])  # 24: padded to a 32-wide tile
def test_decoding_long_prefixes(hq, hkv, d):
    """One query per sequence over prefixes spanning several key blocks (the unmasked loop);
    q is a strided view, as a slice of a fused QKV projection would be."""
    gen = torch.Generator().manual_seed(hq + d)
    seqs = [Seq(200, 1), Seq(128, 1), Seq(63, 1), Seq(0, 1)]
    batch = make_batch(seqs, page=16, hq=hq, hkv=hkv, d=d, dtype=torch.float32, gen=gen)
    batch["q"] = torch.cat([batch["q"], torch.randn_like(batch["q"])], dim=1)[:, :hq]
    assert_matches_reference(batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_prefill_spanning_query_tiles(dtype):
    """A chunk of queries after a prefix: several query tiles, each along the causal diagonal."""
    gen = torch.Generator().manual_seed(7)
    seqs = [Seq(150, 100), Seq(0, 77)]
    assert_matches_reference(make_batch(seqs, page=16, hq=2, hkv=1, d=16, dtype=dtype, gen=gen))


def test_large_tree_spanning_key_blocks():
    """A 100-node window over a short prefix: window keys span two key blocks."""
    gen = torch.Generator().manual_seed(3)
    seqs = [
        Seq(9, 90, tree_parents("random", 100, gen)),
        Seq(64, 40, tree_parents("deep", 40, gen)),
    ]
    batch = make_batch(seqs, page=32, hq=4, hkv=2, d=16, dtype=torch.float16, gen=gen)
    assert_matches_reference(batch)


def test_query_that_sees_no_key_returns_zeros():
    """Outside the contract (a node always sees itself), but it must not produce NaN."""
    gen = torch.Generator().manual_seed(0)
    seqs = [Seq(0, 2, (-1, 0)), Seq(4, 1, (-1,))]
    batch = make_batch(seqs, page=16, hq=2, hkv=1, d=16, dtype=torch.float32, gen=gen)
    batch["tree_mask"][0] = False
    out = attn.tree_attention(**batch)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    torch.testing.assert_close(out[1:], attn.tree_attention_ref(**batch)[1:])


def test_no_queries_returns_empty():
    gen = torch.Generator().manual_seed(0)
    seqs = [Seq(5, 0), Seq(3, 0)]
    batch = make_batch(seqs, page=4, hq=2, hkv=1, d=16, dtype=torch.float16, gen=gen)
    assert attn.tree_attention(**batch).shape == (0, 2, 16)


def _corrupt(batch, key, value):
    return {**batch, key: value}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: _corrupt(b, "block_tables", b["block_tables"].long()), "int32"),
        (lambda b: _corrupt(b, "k_cache", b["k_cache"].half()), "dtypes differ"),
        (lambda b: _corrupt(b, "q", b["q"].double()), "not fp16, bf16 or fp32"),
        (lambda b: _corrupt(b, "tree_lens", None), "together"),
        (lambda b: _corrupt(b, "tree_mask", b["tree_mask"].int()), "bool"),
        (lambda b: _corrupt(b, "q", b["q"].mT.contiguous().mT), "last dim"),
        (lambda b: _corrupt(b, "q", b["q"][:, :3]), "multiple of KV heads"),
        (lambda b: _corrupt(b, "cu_seqlens_q", b["cu_seqlens_q"][:-1]), "cu_seqlens_q"),
    ],
)
def test_launcher_rejects_bad_inputs(change, message):
    gen = torch.Generator().manual_seed(0)
    seqs = [Seq(3, 2, (-1, 0)), Seq(1, 1, (-1,))]
    batch = make_batch(seqs, page=4, hq=4, hkv=2, d=16, dtype=torch.float32, gen=gen)
    with pytest.raises(ValueError, match=message):
        attn.tree_attention(**change(batch))


# ----------------------------------------------------------------------------- paged KV


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", [1, 16, 32])
def test_write_kv_matches_reference(dtype, page):
    gen = torch.Generator().manual_seed(page)
    hkv, d, t = 3, 16, 11
    num_blocks = -(-2 * t // page) + 1  # twice the slots needed
    k_cache = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype).to(DEVICE)
    v_cache = torch.randn(num_blocks, page, hkv, d, generator=gen).to(dtype).to(DEVICE)
    # K and V as the model makes them: strided views into one fused projection.
    kv = torch.randn(t, 2 * hkv * d + 5, generator=gen).to(dtype).to(DEVICE)
    k = kv[:, : hkv * d].view(t, hkv, d)
    v = kv[:, hkv * d : 2 * hkv * d].view(t, hkv, d)
    slots = torch.randperm(num_blocks * page, generator=gen)[:t].to(DEVICE)
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    paged.write_kv_ref(expect_k, expect_v, k, v, slots)
    paged.write_kv(k_cache, v_cache, k, v, slots)
    assert torch.equal(k_cache, expect_k) and torch.equal(v_cache, expect_v)


def test_write_kv_nothing_to_write():
    cache = torch.randn(2, 4, 1, 16, device=DEVICE)
    before = cache.clone()
    empty = torch.empty(0, 1, 16, device=DEVICE)
    paged.write_kv(cache, cache, empty, empty, torch.empty(0, dtype=torch.int64, device=DEVICE))
    assert torch.equal(cache, before)


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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", [1, 16, 32])
def test_commit_kv_matches_reference(dtype, page):
    gen = torch.Generator().manual_seed(page)
    src, dst, num_slots = path_commits([5, 0, 33, 17], tree_size=9, page=page, gen=gen)
    layers, hkv, d = 3, 2, 16
    kv_cache = torch.randn(layers, 2, num_slots // page, page, hkv, d, generator=gen)
    kv_cache = kv_cache.to(dtype).to(DEVICE)
    expect = kv_cache.clone()
    paged.commit_kv_ref(expect, src, dst)
    paged.commit_kv(kv_cache, src, dst)
    assert torch.equal(kv_cache, expect)


def test_commit_kv_reads_every_source_before_writing():
    """A swap and a 3-cycle: any copy order without staging would lose a source."""
    kv_cache = torch.randn(2, 2, 3, 4, 1, 16, device=DEVICE)
    src = torch.tensor([0, 5, 7, 8, 9], device=DEVICE)
    dst = torch.tensor([5, 0, 8, 9, 7], device=DEVICE)
    expect = kv_cache.clone()
    paged.commit_kv_ref(expect, src, dst)
    paged.commit_kv(kv_cache, src, dst)
    assert torch.equal(kv_cache, expect)


def test_paged_kv_rejects_bad_inputs():
    kv_cache = torch.zeros(1, 2, 2, 4, 1, 16, device=DEVICE)
    slots = torch.tensor([1, 2], device=DEVICE)
    with pytest.raises(ValueError, match="int64"):
        paged.commit_kv(kv_cache, slots.int(), slots.int())
    with pytest.raises(ValueError, match="contiguous"):
        paged.commit_kv(kv_cache.transpose(2, 3), slots, slots)
    k = torch.zeros(2, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="share a dtype"):
        paged.write_kv(kv_cache[0, 0], kv_cache[0, 1], k.half(), k.half(), slots)


# ----------------------------------------------------------------------------- compiled kernels

_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels.paged_kv import _copy_rows_kernel
from kernels.tree_attention import _tree_attention_kernel

def build(fn, types, consts):
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32))

for dt, tree, group, page, head_dim, block_m in [("fp16", True, 4, 16, 128, 64),
                                                 ("bf16", False, 8, 1, 80, 16)]:
    ptrs = dict.fromkeys(["q", "k_cache", "v_cache", "out"], "*" + dt)
    ptrs.update(block_tables="*i32", kv_lens="*i32", cu_seqlens_q="*i32", tree_lens="*i32",
                tree_mask="*u8" if tree else "*i32", scale_log2e="fp32")
    build(_tree_attention_kernel, ptrs, dict(
        HEAD_DIM=head_dim, GROUP=group, PAGE=page, TREE=tree, BLOCK_Q=block_m // group,
        BLOCK_M=block_m, BLOCK_N=64, BLOCK_D=triton.next_power_of_2(head_dim),
        PRECISION=None, UPCAST=False))
build(_copy_rows_kernel, dict(src="*fp16", dst="*fp16", src_index="*i64", dst_index="*i64"),
      dict(ROW=1024, BLOCK=1024, SRC_INDEXED=True, DST_INDEXED=False))
print("compiled")
"""


@pytest.mark.skipif(
    "constexprs" not in inspect.signature(triton.compiler.ASTSource).parameters,
    reason="this triton has another ahead-of-time compile API (ASTSource without constexprs)",
)
def test_kernels_compile_for_hopper():
    """The interpreter accepts code the compiler rejects: lower the kernels to sm_90 machine code
    (Triton's bundled ptxas; no GPU needed) in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300,
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-4000:]


# ----------------------------------------------------------------------------- GPU, serving shapes

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_tree_verification(dtype):
    """32 sequences x ~2048 committed keys x 64-node trees, 32 query heads over 8 KV heads."""
    gen = torch.Generator().manual_seed(0)
    shapes = ["random", "deep", "wide", "chain"]
    seqs = [Seq(2048 - 2 * b - 1, 64, tree_parents(shapes[b % 4], 64, gen)) for b in range(32)]
    assert_matches_reference(make_batch(seqs, page=16, hq=32, hkv=8, d=128, dtype=dtype, gen=gen))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_decoding_and_prefill(dtype):
    gen = torch.Generator().manual_seed(1)
    decode = [Seq(2048 + 37 * b, 1) for b in range(32)]
    assert_matches_reference(make_batch(decode, page=16, hq=32, hkv=8, d=128, dtype=dtype, gen=gen))
    chunks = [Seq(1001, 512), Seq(0, 777), Seq(3000, 1)]
    assert_matches_reference(make_batch(chunks, page=16, hq=32, hkv=8, d=128, dtype=dtype, gen=gen))


@pytest.mark.gpu
@gpu
def test_gpu_commit_kv_at_serving_shape():
    gen = torch.Generator().manual_seed(2)
    prefixes = [2048 + b for b in range(32)]
    src, dst, num_slots = path_commits(prefixes, tree_size=64, page=16, gen=gen)
    kv_cache = torch.randn(4, 2, num_slots // 16, 16, 8, 128, dtype=torch.float16, device=DEVICE)
    expect = kv_cache.clone()
    paged.commit_kv_ref(expect, src, dst)
    paged.commit_kv(kv_cache, src, dst)
    assert torch.equal(kv_cache, expect)
