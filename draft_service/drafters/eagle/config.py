"""The shape of an EAGLE head and its files on disk (``config.json``, ``model.safetensors``).

A head belongs to one target: it reads the target's hidden states at ``feature_layers``, its
token embedding, and maps its truncated draft vocabulary back to target token ids (``d2t``,
stored in the safetensors file beside the weights).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from specgrove.modeling.config import ModelConfig, RopeConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class EagleConfig:
    hidden_size: int  # the target's hidden size d
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_positions: int
    feature_layers: tuple[int, ...]  # target decoder layers (0-based outputs) read as features
    target_vocab_size: int
    draft_vocab_size: int
    rope: RopeConfig = field(default_factory=RopeConfig)
    target: str = ""  # the target it was trained for (informational)

    @staticmethod
    def for_target(target: ModelConfig, feature_layers, draft_vocab_size: int, name: str = "") -> "EagleConfig":
        """A head shaped like one decoder layer of ``target``."""
        return EagleConfig(
            target.hidden_size, target.intermediate_size, target.num_heads, target.num_kv_heads,
            target.head_dim, target.rms_norm_eps, target.max_positions, tuple(feature_layers),
            target.vocab_size, draft_vocab_size, target.rope, name)

    @property
    def feature_width(self) -> int:
        return len(self.feature_layers) * self.hidden_size

    def layer_config(self) -> ModelConfig:
        """The decoder layer's hyper-parameters, as a one-layer llama model."""
        return ModelConfig("llama", self.draft_vocab_size, self.hidden_size, self.intermediate_size,
                           1, self.num_heads, self.num_kv_heads, self.head_dim, self.rms_norm_eps,
                           self.max_positions, False, False, self.rope)

    def check_target(self, target: ModelConfig, where: str = "spec") -> None:
        """Refuse a target this head cannot serve, saying why."""
        from specgrove.errors import InvalidRequest

        problems = []
        if target.vocab_size != self.target_vocab_size:
            problems.append(f"vocabulary {self.target_vocab_size} vs the target's {target.vocab_size}")
        if target.hidden_size != self.hidden_size:
            problems.append(f"hidden size {self.hidden_size} vs the target's {target.hidden_size}")
        bad = [l for l in self.feature_layers if not 0 <= l < target.num_layers]
        if bad:
            problems.append(f"feature layers {bad} outside the target's {target.num_layers} layers")
        if problems:
            raise InvalidRequest(where, f"this EAGLE head does not fit the target: {'; '.join(problems)}")

    def save(self, directory: Path) -> None:
        data = asdict(self)
        data["feature_layers"] = list(self.feature_layers)
        (directory / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @staticmethod
    def load(directory: Path) -> "EagleConfig":
        from specgrove.errors import InvalidRequest

        data = json.loads((directory / CONFIG_FILE).read_text())
        if "feature_layers" not in data or "draft_vocab_size" not in data:
            raise InvalidRequest("spec", f"{directory} is not an EAGLE head (its config.json lacks "
                                         "feature_layers / draft_vocab_size)")
        data["rope"] = RopeConfig(**data["rope"])
        data["feature_layers"] = tuple(data["feature_layers"])
        return EagleConfig(**data)
