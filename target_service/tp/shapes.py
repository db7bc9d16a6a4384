"""Which model dimensions tensor parallelism splits, checked before any rank starts.

Megatron-LM (Shoeybi et al. 2019) splits attention by heads and the MLP by its intermediate
features, so each of those must divide evenly by the number of ranks. The vocabulary needs no
check: the vocabulary-parallel embedding and LM head pad it to a multiple of the size.
"""
from __future__ import annotations

from specgrove.modeling.config import ModelConfig
from target_service.tp.errors import TPShapeError


def check_tp_shapes(cfg: ModelConfig, tp_size: int, model: str = "the model") -> None:
    """Raise :class:`TPShapeError` naming every dimension that ``tp_size`` does not divide."""
    if tp_size < 1:
        raise TPShapeError(f"the tensor-parallel size must be at least 1, not {tp_size}")
    dims = {
        "attention heads (num_attention_heads)": cfg.num_heads,
        "KV heads (num_key_value_heads)": cfg.num_kv_heads,
        "MLP intermediate size (intermediate_size)": cfg.intermediate_size,
    }
    bad = [f"{name} = {n}" for name, n in dims.items() if n % tp_size]
    if bad:
        raise TPShapeError(
            f"cannot split {model} over {tp_size} tensor-parallel ranks: "
            f"{'; '.join(bad)} {'is' if len(bad) == 1 else 'are'} not divisible by {tp_size}"
        )
