"""Compiled kernels: lowered for sm_90 without a GPU, and run at serving shapes on CUDA."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
import torch
import triton

from specgrove.kernels import paged_kv as paged
from tests.triton_kernels.cases import (
    DEVICE, REPO, Seq, assert_matches_reference, make_batch, path_commits, tree_parents,
)


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from specgrove.kernels.paged_kv import _copy_rows_kernel
from specgrove.kernels.tree_attention import _tree_attention_kernel

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
