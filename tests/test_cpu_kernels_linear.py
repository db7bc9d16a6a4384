"""The C++ CPU linears (``specgrove/kernels/cpu_linear.py``), whichever kernel set this CPU builds
(AVX512_BF16, with AMX where present, or AVX2 + FMA): bf16 and weight-only int8 against their
plain-torch references and float64 matmuls of the same weights, at every height M of a decode step or
tree verify (1..33: one, several and partial register tiles) and at shapes with N and K tails; the
output rounding bit for bit; the packing round-trips; and a model whose linears run on them decodes
like the dense one."""
from __future__ import annotations

import pytest
import torch

from specgrove.kernels import cpu_linear
from specgrove.kernels.cpu_build import cpu_flags

pytestmark = pytest.mark.skipif(
    not cpu_linear.available(), reason="no CPU linear kernels here (AVX2+FMA or AVX512_BF16 and a compiler)")

# (K, N): the embedded model's shapes, then tails: N not a multiple of 16 (or of 64, the register
# tile's width; 29: the last block's second 8 outputs partial, AVX2 stores 8 at a time), K odd or
# not a multiple of 32, a single output, a single input.
SHAPES = [(576, 960), (1536, 576), (64, 4), (33, 17), (7, 100), (200, 1), (1, 48), (96, 1000),
          (40, 29)]


def _close(y: torch.Tensor, exact: torch.Tensor) -> bool:
    # Stated tolerance: bf16 output rounding (2^-8 relative) plus a small absolute term; the
    # float32 accumulation error is far below it.
    return bool(((y.double() - exact).abs() <= exact.abs() * 2 ** -8 + 1e-3).all())


def _case(m: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(m * 7919 + k * 31 + n)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=g) * 0.05).to(torch.bfloat16)
    return x, w


# Both paths at every height: the register tiles alone (VDPBF16PS, or AVX2 FMAs), and (on a CPU
# with AMX) with the AMX tiles taking the heights from AMX_MIN_ROWS on (for K a multiple of 32;
# other K stay on the register tiles).
AMX = [False, pytest.param(True, marks=pytest.mark.skipif(not cpu_linear.amx_available(),
                                                         reason="no AMX tiles on this CPU"))]


@pytest.mark.parametrize("amx", AMX)
@pytest.mark.parametrize("k,n", SHAPES)
def test_bf16_every_height_equals_reference(k, n, amx):
    layer = cpu_linear.Bf16Linear(w := _case(1, k, n)[1], amx=amx)
    assert layer.amx == (amx and k % 32 == 0)
    assert torch.equal(layer.dequantized(), w.float())  # packing keeps every weight
    for m in range(1, 34):
        x = _case(m, k, n)[0]
        y = layer(x)
        assert y.dtype == torch.bfloat16 and y.shape == (m, n)
        assert _close(y, x.double() @ w.double().t()), m
        # and the reference of the same computation (float32 sums), within one bf16 step
        ref = cpu_linear.linear_bf16_ref(x, w).float()
        assert ((y.float() - ref).abs() <= ref.abs() * 2 ** -7 + 1e-4).all(), m


@pytest.mark.parametrize("amx", AMX)
@pytest.mark.parametrize("k,n", SHAPES)
def test_int8_every_height_equals_reference(k, n, amx):
    w = _case(1, k, n)[1]
    layer = cpu_linear.Int8Linear(w, amx=amx)
    q, scale = cpu_linear.quantize_per_channel(w)
    assert torch.equal(layer.q, q) and torch.equal(layer.scale, scale)
    # the int8 weight is within half a step of the float weight, per channel
    assert ((layer.dequantized() - w.float()).abs() <= scale[:, None] / 2 + 1e-6).all()
    for m in range(1, 34):
        x = _case(m, k, n)[0]
        y = layer(x)
        assert y.dtype == torch.bfloat16 and y.shape == (m, n)
        assert _close(y, x.double() @ layer.dequantized().double().t()), m
        ref = cpu_linear.linear_int8_ref(x, q, scale).float()
        assert ((y.float() - ref).abs() <= ref.abs() * 2 ** -7 + 1e-4).all(), m


@pytest.mark.parametrize("amx", AMX)
@pytest.mark.parametrize("m", [1, 5, 16, 33])
def test_large_vocabulary_head(m, amx):
    """The LM head's shape (N = 49152): many blocks split across threads."""
    x, w = _case(m, 576, 49152)
    exact = x.double() @ w.double().t()
    assert _close(cpu_linear.Bf16Linear(w, amx=amx)(x), exact)
    int8 = cpu_linear.Int8Linear(w, amx=amx)
    assert _close(int8(x), x.double() @ int8.dequantized().double().t())


def test_isa_matches_the_cpu():
    """AVX512_BF16 CPUs build the VDPBF16PS kernels (and AMX only with them), others with AVX2 the
    FMA ones."""
    flags = cpu_flags()
    assert cpu_linear.isa() == ("avx512_bf16" if "avx512_bf16" in flags else "avx2")
    assert not cpu_linear.amx_available() or cpu_linear.isa() == "avx512_bf16"


def test_output_rounding_matches_torch_bit_for_bit():
    """One input (K = 1, padded to a zero pair): every float32 sum is one exact product, so the
    only rounding is the final one to bf16 and must be torch's (nearest even, ties included; NaN
    stays NaN; beyond the bf16 range, inf)."""
    x, w = _case(33, 1, 45)
    x[3, 0], x[4, 0], x[5, 0] = float("nan"), float("inf"), 1e38
    ref = cpu_linear.linear_bf16_ref(x, w)
    torch.testing.assert_close(cpu_linear.Bf16Linear(w)(x), ref, rtol=0, atol=0, equal_nan=True)
    int8 = cpu_linear.Int8Linear(w)
    ref = cpu_linear.linear_int8_ref(x, int8.q, int8.scale)
    torch.testing.assert_close(int8(x), ref, rtol=0, atol=0, equal_nan=True)


def test_leading_dimensions_and_float_inputs():
    """[..., K] inputs of any float dtype: the kernel sees bf16 rows, the output keeps the batch shape."""
    x, w = _case(6, 100, 40)
    layer = cpu_linear.Bf16Linear(w)
    y = layer(x.float().reshape(2, 3, 100))
    assert y.shape == (2, 3, 40) and torch.equal(y.reshape(6, 40), layer(x))
    assert layer(x[:0]).shape == (0, 40)


def test_pack_round_trip_and_layout():
    w = torch.arange(17 * 5, dtype=torch.float32).reshape(17, 5)
    p = cpu_linear.pack_pairs(w)
    assert p.shape == (2, 3, 16, 2)
    assert p[0, 1, 3, 0] == w[3, 2] and p[1, 2, 0, 0] == w[16, 4] and p[1, 2, 0, 1] == 0  # padded
    assert torch.equal(cpu_linear.unpack_pairs(p, 17, 5), w)


def test_model_on_the_cpu_linears_decodes_like_dense_bf16(tiny_dirs, tmp_path):
    """A bf16 tiny model with 64-wide layers: logits of the kernels (linears, and the fused
    element-wise ops) vs oneDNN and the torch expressions within bf16 noise."""
    from tests.helpers import runner
    from specgrove.runner import ForwardItem

    dense = runner(tiny_dirs["llama"], dtype=torch.bfloat16, backend="torch")
    fast = runner(tiny_dirs["llama"], dtype=torch.bfloat16, backend="cpu")
    assert fast.model.model.layers[0].mlp.down_proj.kernel is not None
    assert fast.model.model.layers[0].mlp.down_proj.weight.numel() == 0  # not held twice
    from specgrove.kernels import cpu_elementwise
    if cpu_elementwise.available():  # and the fused norm, activation and RoPE
        layer = fast.model.model.layers[0]
        assert layer.input_layernorm.fused is cpu_elementwise.rms_norm
        assert layer.mlp.act is cpu_elementwise.silu_mul and layer.self_attn.rope is cpu_elementwise.rope
    quant = runner(tiny_dirs["llama"], dtype=torch.bfloat16, backend="cpu")
    from specgrove.modeling.cpu_kernels import use_cpu_linears
    for module in quant.model.modules():  # back to dense, then int8
        if getattr(module, "kernel", None) is not None:
            module.weight = torch.nn.Parameter(module.kernel.dequantized().to(torch.bfloat16), requires_grad=False)
            module.kernel = None
    assert use_cpu_linears(quant.model, "int8") > 0
    assert use_cpu_linears(quant.model, "int8") == 0  # a second call leaves the kernels alone
    prompt = tuple(range(3, 40))
    outs = []
    for r in (dense, fast, quant):
        r.blocks.add_sequence(0)
        outs.append(r.forward([ForwardItem(0, prompt, range(len(prompt)), all_logits=True)])[0].float())
    scale = outs[0].abs().max()
    assert (outs[1] - outs[0]).abs().max() < 0.05 * scale
    assert (outs[2] - outs[0]).abs().max() < 0.1 * scale
    assert (outs[1].argmax(-1) == outs[0].argmax(-1)).float().mean() > 0.9
