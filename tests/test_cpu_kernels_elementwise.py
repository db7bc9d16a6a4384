"""The fused bfloat16 element-wise CPU kernels (``specgrove/kernels/cpu_elementwise.py``) against the
torch expressions they replace: RMSNorm, SiLU(gate) * up and rotate-half RoPE, at decode, tree and
prefill heights, odd sizes and strided inputs (RoPE reads Q and K as views of the QKV output)."""
from __future__ import annotations

import pytest
import torch

from specgrove.kernels import cpu_elementwise as ew

pytestmark = pytest.mark.skipif(not ew.available(), reason="the CPU kernels did not build here")

ROWS = [1, 3, 16, 33, 300]


def _randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)


def _within_one_step(y: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal but for float32 differences under the last rounding: one bf16 step (2^-8 relative)."""
    assert y.dtype == ref.dtype == torch.bfloat16 and y.shape == ref.shape
    diff = (y.float() - ref.float()).abs()
    assert (diff <= ref.float().abs() * 2 ** -7 + 1e-6).all()
    assert (diff == 0).float().mean() > 0.95  # the same rounding points: almost all bit-equal


@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("h", [576, 64, 7])
def test_rms_norm_equals_reference(t, h):
    x, w = _randn(t, h, seed=t * 100 + h, scale=3.0), _randn(h, seed=h)
    _within_one_step(ew.rms_norm(x, w, 1e-5), ew.rms_norm_ref(x, w, 1e-5))
    # leading dimensions are kept
    assert ew.rms_norm(x.reshape(1, t, h), w, 1e-5).shape == (1, t, h)


@pytest.mark.parametrize("t", ROWS)
@pytest.mark.parametrize("i", [1536, 5])
def test_silu_mul_equals_reference(t, i):
    gu = _randn(t, 2 * i, seed=t + i, scale=4.0)
    _within_one_step(ew.silu_mul(gu), ew.silu_mul_ref(gu))


def test_silu_mul_extremes():
    """Large |gate|: silu saturates to 0 and to the identity without inf or nan."""
    gate = torch.tensor([[-200.0, -90.0, -10.0, 0.0, 10.0, 90.0, 200.0]])
    gu = torch.cat([gate, torch.ones_like(gate)], dim=-1).to(torch.bfloat16)
    y = ew.silu_mul(gu)
    assert torch.isfinite(y.float()).all()
    _within_one_step(y, ew.silu_mul_ref(gu))


@pytest.mark.parametrize("t", ROWS)
def test_rope_equals_reference_on_views_of_the_qkv_output(t):
    hq, hk, d = 9, 3, 64
    qkv = _randn(t, (hq + 2 * hk) * d, seed=t)
    q, k, _ = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    q, k = q.view(t, hq, d), k.view(t, hk, d)  # strided views, as in PagedAttention
    angles = torch.arange(t, dtype=torch.float32)[:, None] * torch.rand(d // 2)[None]
    cos = angles.cos().to(torch.bfloat16).unsqueeze(1)  # [T, 1, D/2]
    sin = angles.sin().to(torch.bfloat16).unsqueeze(1)
    for x in (q, k):
        y = ew.rope(x, cos, sin)
        assert y.is_contiguous()
        assert torch.equal(y, ew.rope_ref(x, cos, sin))  # same products, same roundings


def test_refuses_other_dtypes():
    with pytest.raises(RuntimeError, match="bfloat16"):
        ew.silu_mul(torch.randn(2, 8))


@pytest.mark.parametrize("n,v", [(1, 49152), (16, 49152), (3, 1), (5, 17)])
def test_argmax_rows_equals_torch(n, v):
    logits = _randn(n, v, seed=n + v, scale=5.0)
    assert torch.equal(ew.argmax_rows(logits), logits.argmax(dim=-1))


def test_argmax_rows_ties_and_nan_follow_torch():
    logits = torch.zeros(4, 300, dtype=torch.bfloat16)
    logits[0, [7, 9, 200]] = 3.0  # ties: the first
    logits[1] = float("-inf")  # all -inf: index 0
    logits[2, 5], logits[2, 100] = 4.0, float("nan")  # a NaN wins
    logits[3, 299] = float("inf")
    expected = logits.argmax(dim=-1)
    assert expected.tolist() == [7, 0, 100, 299]
    assert torch.equal(ew.argmax_rows(logits), expected)
    assert torch.equal(ew.argmax_rows(logits.float()), expected)  # other dtypes: torch itself


@pytest.mark.parametrize("i", [8, 13, 1541])
def test_silu_mul_vector_tails(i):
    """Widths that are not a multiple of the vector (8 or 16 lanes): the scalar tail agrees."""
    gu = _randn(5, 2 * i, seed=i, scale=4.0)
    _within_one_step(ew.silu_mul(gu), ew.silu_mul_ref(gu))


def test_silu_mul_special_values():
    """Overflowing exp, inf and nan gates, in the vector body and in the tail, as torch."""
    gate = torch.tensor([-3e38, -1e30, -200.0, -88.0, 88.0, 1e30, float("inf"), float("-inf"),
                         float("nan"), 0.5, -0.5, 1e-30, -1e30, 3e38, float("nan"), -90.0, 90.0])
    gu = torch.cat([gate, torch.full_like(gate, 3.0)]).to(torch.bfloat16)[None]
    y, ref = ew.silu_mul(gu).float(), ew.silu_mul_ref(gu).float()
    assert torch.equal(y.isnan(), ref.isnan())
    ok = ~ref.isnan()
    assert torch.equal(y[ok].isinf(), ref[ok].isinf())
    fin = ok & ~ref.isinf()
    assert ((y[fin] - ref[fin]).abs() <= ref[fin].abs() * 2 ** -7 + 1e-6).all()


@pytest.mark.parametrize("v", [7, 8, 9, 23, 49157])
def test_argmax_rows_ties_and_nan_across_vector_tails(v):
    """The maximum, a tie and a NaN in the vector body and in the tail (V not a multiple of 8/16)."""
    rows = []
    for best, tie, nan in [(v - 1, None, None), (0, v - 1, None), (v // 2, v - 1, None),
                           (v - 1, None, 0), (0, None, v - 1), (v // 2, None, v // 3 + 1)]:
        row = _randn(v, seed=v + len(rows), scale=2.0)
        row[best] = 20.0
        if tie is not None:
            row[tie] = 20.0
        if nan is not None:
            row[nan] = float("nan")
        rows.append(row)
    logits = torch.stack(rows)
    assert torch.equal(ew.argmax_rows(logits), logits.argmax(dim=-1))
