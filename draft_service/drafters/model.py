"""A small causal LM as drafter (any model sharing the target's tokenizer): static or dynamic
(EAGLE-2) token trees grown with its own paged KV cache (``tree_drafter``)."""
from __future__ import annotations

from typing import Sequence

import torch

from draft_service.drafters.base import DraftInput
from draft_service.drafters.tree_drafter import TreeDrafter
from draft_service.trees import TreeGrowth
from specgrove.runner import ForwardItem, ModelRunner


class ModelDrafter(TreeDrafter):
    kind = "model"

    def __init__(self, runner: ModelRunner) -> None:
        super().__init__(runner, runner.config.vocab_size)

    def _catch_up(self, inputs: Sequence[DraftInput], growths: list[TreeGrowth]) -> list[torch.Tensor]:
        bm = self.runner.blocks
        items = []
        for inp in inputs:
            if inp.seq_id not in bm:
                bm.add_sequence(inp.seq_id)
            start = bm.committed_len(inp.seq_id)
            if start >= len(inp.history):  # history rewound (should not happen): start over
                bm.free(inp.seq_id)
                bm.add_sequence(inp.seq_id)
                start = 0
            items.append(ForwardItem(inp.seq_id, inp.history[start:], range(start, len(inp.history))))
        logits = self.runner.forward(items)
        self.runner.commit_many([(it.seq_id, len(it.token_ids), None) for it in items])
        return logits
