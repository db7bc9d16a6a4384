"""The C++ CPU linears (``specgrove/kernels/cpu_linear.py``): bf16 and weight-only int8 against float64
matmuls of the same weights; and a model whose linears run on them decodes like the dense one."""
from __future__ import annotations

import pytest
import torch

from specgrove.kernels import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="no AVX512_BF16 CPU kernels here")


@pytest.mark.parametrize("m", [1, 3, 4, 5, 16, 33])
@pytest.mark.parametrize("k,n", [(576, 960), (1536, 576), (64, 4), (576, 49152)])
def test_bf16_and_int8_equal_their_float64_computation(m, k, n):
    g = torch.Generator().manual_seed(m * 7 + n)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=g) * 0.05).to(torch.bfloat16)
    exact = x.double() @ w.double().t()
    y = cpu_linear.Bf16Linear(w)(x)
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    # Stated tolerance: bf16 output rounding (2^-8 relative) plus a small absolute term; the
    # float32 accumulation error is far below it.
    assert ((y.double() - exact).abs() <= exact.abs() * 2 ** -8 + 1e-3).all()
    int8 = cpu_linear.Int8Linear(w)
    exact8 = x.double() @ int8.dequantized().double().t()
    assert ((int8(x).double() - exact8).abs() <= exact8.abs() * 2 ** -8 + 1e-3).all()
    # and the int8 weight is within half a step of the float weight, per channel
    assert ((int8.dequantized() - w.float()).abs() <= int8.scale[:, None] / 2 + 1e-6).all()


def test_model_on_the_cpu_linears_decodes_like_dense_bf16(tiny_dirs, tmp_path):
    """A bf16 tiny model with 64-wide layers: logits of the kernels vs oneDNN within bf16 noise."""
    from tests.helpers import runner
    from specgrove.runner import ForwardItem

    dense = runner(tiny_dirs["llama"], dtype=torch.bfloat16, backend="torch")
    fast = runner(tiny_dirs["llama"], dtype=torch.bfloat16, backend="cpu")
    assert fast.model.model.layers[0].mlp.down_proj.kernel is not None
    quant = runner(tiny_dirs["llama"], dtype=torch.bfloat16, backend="cpu")
    from specgrove.modeling.cpu_kernels import use_cpu_linears
    assert use_cpu_linears(quant.model, "int8") > 0
    prompt = tuple(range(3, 40))
    outs = []
    for r in (dense, fast, quant):
        r.blocks.add_sequence(0)
        outs.append(r.forward([ForwardItem(0, prompt, range(len(prompt)), all_logits=True)])[0].float())
    scale = outs[0].abs().max()
    assert (outs[1] - outs[0]).abs().max() < 0.05 * scale
    assert (outs[2] - outs[0]).abs().max() < 0.1 * scale
    assert (outs[1].argmax(-1) == outs[0].argmax(-1)).float().mean() > 0.9
