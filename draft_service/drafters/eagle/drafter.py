"""The EAGLE drafter: a trained head drafting from the target's own features.

Per sequence the head keeps a paged KV of its one layer. Each step it catches up on the tokens
committed since its last call -- token ``x_t`` with the target's feature ``f_{t-1}`` (fused)
-- the pending token last, whose output ``h`` gives the root's children; then each depth feeds
every frontier node its own token with its parent's output ``h`` as the feature (EAGLE's
autoregression at the feature level), all sequences in one batched forward per depth.

Features arrive from the gateway with the tokens (``DraftInput.features``). A sequence that
starts mid-way (a head loaded while it ran, or the draft service restarted) has features only
for recent tokens: the head then attends over those alone, which lowers its acceptance at first
and never its correctness. Without any feature the head proposes root-only trees.
"""
from __future__ import annotations

from typing import Sequence

import torch

from draft_service.drafters.base import DraftInput
from draft_service.drafters.eagle.serving import EagleServingModel
from draft_service.drafters.tree_drafter import TreeDrafter
from draft_service.trees import TreeGrowth, frontier_item
from specgrove.runner import ForwardItem, ModelRunner
from specgrove.tree import TokenTree


class EagleDrafter(TreeDrafter):
    kind = "eagle"

    def __init__(self, runner: ModelRunner) -> None:
        model: EagleServingModel = runner.model
        super().__init__(runner, model.eagle.target_vocab_size, model.d2t)
        self.head = model
        self.feature_layers = model.eagle.feature_layers
        self._next_position: dict[int, int] = {}  # per sequence: the next token position to run

    def release(self, seq_id: int) -> None:
        super().release(seq_id)
        self._next_position.pop(seq_id, None)

    @torch.inference_mode()
    def propose(self, inputs: Sequence[DraftInput]) -> list[TokenTree]:
        ready = {inp.seq_id for inp in inputs if self._catch_up_item(inp, dry_run=True) is not None}
        trees = super().propose([inp for inp in inputs if inp.seq_id in ready])
        drafted = {inp.seq_id: t for inp, t in zip([i for i in inputs if i.seq_id in ready], trees)}
        return [drafted.get(inp.seq_id) or TokenTree.root_only(inp.history[-1]) for inp in inputs]

    def _catch_up(self, inputs: Sequence[DraftInput], growths: list[TreeGrowth]) -> list[torch.Tensor]:
        items = [self._catch_up_item(inp) for inp in inputs]
        out = self.runner.run(items, hidden_out=True)
        self.runner.commit_many([(it.seq_id, len(it.token_ids), None) for it in items])
        roots = []
        for inp, growth, hidden in zip(inputs, growths, out.logits):
            self._next_position[inp.seq_id] = len(inp.history)
            growth.node_data[0] = hidden[-1]  # the root's output: its children's feature
            roots.append(self.head.logits(hidden[-1:]))
        return roots

    def _catch_up_item(self, inp: DraftInput, dry_run: bool = False) -> ForwardItem | None:
        """Tokens ``x_p .. x_pending`` with features ``f_{p-1} ..``; None if none can run.

        ``inp.features`` covers the tokens just before ``pending``; if it does not reach back
        to the next position this head expects (a gap), the head starts over from what it has.
        """
        pending = len(inp.history) - 1
        rows = inp.features.rows if inp.features is not None else 0
        first_row_token = pending - rows  # the token whose feature is row 0
        start = self._next_position.get(inp.seq_id)
        if start is None or start > pending or first_row_token > start - 1:
            start = max(1, first_row_token + 1)  # (re)start from the features at hand
            if start > pending:
                return None
            if not dry_run:
                self.runner.blocks.free(inp.seq_id)
                self._next_position.pop(inp.seq_id, None)
        if dry_run:
            return ForwardItem(inp.seq_id, (), ())
        bm = self.runner.blocks
        if inp.seq_id not in bm:
            bm.add_sequence(inp.seq_id)
        used = inp.features.to_tensor()[start - 1 - first_row_token:]  # [pending - start + 1, W]
        return ForwardItem(inp.seq_id, inp.history[start:], range(start, pending + 1),
                           features=self.head.fuse_features(used.to(self.runner.device)))

    def _frontier(self, inp: DraftInput, growth: TreeGrowth, fed: list[int], frontier: list[int]) -> ForwardItem:
        parents = torch.stack([growth.node_data[growth.parents[n]] for n in frontier])  # [n, d]
        return frontier_item(inp.seq_id, growth, fed, frontier, len(inp.history) - 1, features=parents)

    def _expand(self, items, owners, growths) -> list[torch.Tensor]:
        out = self.runner.run(items, hidden_out=True)
        for (i, frontier), hidden in zip(owners, out.logits):
            for row, node in enumerate(frontier):
                growths[i].node_data[node] = hidden[row]
        return [self.head.logits(hidden) for hidden in out.logits]
