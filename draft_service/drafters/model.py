"""A small causal LM as drafter: static or dynamic (EAGLE-2) token trees.

The drafter keeps its own paged KV cache. Each step it first runs, causally, the tokens the
sequence committed since its last call with the pending token last (one batched forward for all
sequences, whose last row gives the root's children), then grows the tree one depth per forward:
the frontier nodes of every sequence go through the model together, each attending to the
committed prefix plus its own ancestors (the same tree attention as the target). Afterwards the
tree slots are dropped; the committed tokens, root included, stay. Draft tokens are the top-k
of the draft distribution -- for a sampled sequence with coupled drafting, the first child is
instead ``argmax(log q + g_i)`` under the target's own position-keyed noise (Gumbel-max coupling,
``specgrove.sampling``), the token the target will pick whenever q is close to p. Either way the
trees are a deterministic function of the history, so acceptance stays lossless. With tracing on, each of those forwards is a ``draft.expand``
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
from specgrove.sampling import NoiseCache, target_tokens
from specgrove.tree import TokenTree


class ModelDrafter:
    kind = "model"

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.max_len = runner.config.max_positions
        self._noise: dict[int, NoiseCache] = {}  # coupled sequences' sampling noise

    def release(self, seq_id: int) -> None:
        self.runner.blocks.free(seq_id)
        self._noise.pop(seq_id, None)

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
            for inp, g, lg in zip(inputs, growths, root_logits):
                self._add_children(inp, g, 0, lg[-1:], 0)
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
                        self._add_children(inputs[i], growths[i], node, lg[row:row + 1], depth)
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

    def _add_children(self, inp: DraftInput, growth: TreeGrowth, node: int, logits: torch.Tensor,
                      depth: int) -> None:
        """Give ``node`` (at ``depth``) its children from its draft logits ([1, V]): the top-k
        by draft log-probability, the first one chosen by the shared noise when coupled."""
        k = growth.children_wanted(depth)
        logprobs = torch.log_softmax(logits[0].float(), dim=-1)  # [V]
        if not inp.coupled:
            top = torch.topk(logprobs, k)
            growth.add_children(node, top.indices.tolist(), top.values.tolist())
            return
        position = len(inp.history) + depth  # where the children's tokens would sit
        (first,) = target_tokens(logits, inp.sampling, [position], self._noise_of(inp))
        rest = torch.topk(logprobs.index_fill(0, torch.tensor([first]), float("-inf")), k - 1)
        tokens = [first] + rest.indices.tolist()
        # Under the shared noise the coupled child is the draft's best guess of the target's
        # pick whatever its own probability: rank it as confidently as a top-1 draft token, so
        # that dynamic trees keep the coupled path.
        growth.add_children(node, tokens, [logprobs.max().item()] + rest.values.tolist())

    def _noise_of(self, inp: DraftInput) -> NoiseCache:
        noise = self._noise.get(inp.seq_id)
        if noise is None or noise.seed != inp.sampling.seed:
            noise = self._noise[inp.seq_id] = NoiseCache(inp.sampling.seed, self.runner.config.vocab_size,
                                                          self.runner.device)
        noise.forget_before(len(inp.history))
        return noise
