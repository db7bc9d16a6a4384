"""A small causal LM as drafter: static or dynamic (EAGLE-2) token trees.

The drafter keeps its own paged KV cache. Each step it first runs, causally, the tokens the
sequence committed since its last call with the pending token last (one batched forward for all
sequences, whose last row gives the root's children), then grows the tree one depth per forward:
the frontier nodes of every sequence go through the model together, each attending to the
committed prefix plus its own ancestors (the same tree attention as the target). Afterwards the
tree slots are dropped; the committed tokens, root included, stay. Draft tokens are the top-k
of the draft distribution, so the trees are deterministic and the target's deterministic-draft
rule keeps decoding lossless. With tracing on, each of those forwards is a ``draft.expand``
span: ``specgrove.tree.depth`` is the depth of the nodes it expands (0: the catch-up, whose last
row expands the root).
"""
from __future__ import annotations

from typing import Sequence

import torch

from draft_service.drafters.base import DraftInput
from draft_service.trees import TreeGrowth
from specgrove import telemetry
from specgrove.kv import KVCacheExhausted
from specgrove.runner import ForwardItem, ModelRunner
from specgrove.tree import TokenTree


class ModelDrafter:
    kind = "model"

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.max_len = runner.config.max_positions

    def release(self, seq_id: int) -> None:
        self.runner.blocks.free(seq_id)

    @torch.inference_mode()
    def propose(self, inputs: Sequence[DraftInput]) -> list[TokenTree]:
        trees: dict[int, TokenTree] = {}
        active = []
        for inp in inputs:
            room = self.max_len - len(inp.history) - 1
            if inp.budget.depth == 0 or room < 1:
                trees[inp.seq_id] = TokenTree.root_only(inp.history[-1])
            else:
                active.append(inp)
        if active:
            try:
                grown = self._grow(active)
            except KVCacheExhausted:
                # Out of draft memory: speculate nothing this step rather than fail the step.
                for inp in active:
                    self.runner.blocks.rollback(inp.seq_id)
                grown = [TokenTree.root_only(inp.history[-1]) for inp in active]
            trees.update({inp.seq_id: t for inp, t in zip(active, grown)})
        return [trees[inp.seq_id] for inp in inputs]

    def _grow(self, inputs: Sequence[DraftInput]) -> list[TokenTree]:
        growths = [TreeGrowth.start(inp.history[-1], inp.budget) for inp in inputs]
        depth_limit = [min(inp.budget.depth, self.max_len - len(inp.history) - 1) for inp in inputs]
        with telemetry.span("draft.expand") as span:
            root_logits = self._catch_up(inputs)
            for g, lg in zip(growths, root_logits):
                self._add_top_children(g, 0, lg[-1], 0)
            if span is not None:
                span.set_attributes({"specgrove.tree.depth": 0, "specgrove.expand.nodes": len(inputs),
                                     "specgrove.batch_size": len(inputs)})
        fed: list[list[int]] = [[] for _ in inputs]  # tree nodes in the draft KV, in write order
        for depth in range(1, max(depth_limit)):
            with telemetry.span("draft.expand") as span:
                batch, owners = [], []
                for i, (inp, g) in enumerate(zip(inputs, growths)):
                    if depth >= depth_limit[i]:
                        continue
                    frontier = g.next_frontier(depth)
                    batch.append(self._frontier_item(inp.seq_id, g, fed[i], frontier, len(inp.history)))
                    owners.append((i, frontier))
                    fed[i] += frontier
                for (i, frontier), lg in zip(owners, self.runner.forward(batch)):
                    for row, node in enumerate(frontier):
                        self._add_top_children(growths[i], node, lg[row], depth)
                if span is not None:
                    span.set_attributes({"specgrove.tree.depth": depth, "specgrove.batch_size": len(batch),
                                         "specgrove.expand.nodes": sum(len(f) for _, f in owners)})
        for inp in inputs:
            self.runner.blocks.rollback(inp.seq_id)
        return [g.finish() for g in growths]

    def _catch_up(self, inputs: Sequence[DraftInput]) -> list[torch.Tensor]:
        """Run every not-yet-seen token (root last) and commit them; root logits last row."""
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

    @staticmethod
    def _frontier_item(seq_id, growth: TreeGrowth, fed: list[int], frontier: list[int], hist_len: int):
        window = fed + frontier
        slot_of = {node: j for j, node in enumerate(window)}
        mask = []
        for node in frontier:
            row = [False] * len(window)
            n = node
            while n > 0:  # the root is committed prefix, outside the window
                row[slot_of[n]] = True
                n = growth.parents[n]
            mask.append(row)
        positions = [hist_len - 1 + growth.depths[n] for n in frontier]
        return ForwardItem(
            seq_id, [growth.tokens[n] for n in frontier], positions,
            tree_offset=len(fed), tree_mask=mask, all_logits=True,
        )

    @staticmethod
    def _add_top_children(growth: TreeGrowth, node: int, logits: torch.Tensor, depth: int) -> None:
        k = growth.children_wanted(depth)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = torch.topk(logprobs, k)
        growth.add_children(node, top.indices.tolist(), top.values.tolist())
