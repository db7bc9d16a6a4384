"""What the model and EAGLE drafters share: growing token trees with a model of their own.

The drafter keeps its own paged KV cache. Each step it first runs, causally, the tokens the
sequence committed since its last call with the pending token last (one batched forward for
all sequences, whose last rows give the roots' children: ``_catch_up``), then grows the trees
one depth per forward: the frontier nodes of every sequence go through the model together,
each attending to the committed prefix plus its own ancestors (the same tree attention as the
target). Afterwards the tree slots are dropped; the committed tokens, root included, stay.

Static shapes expand every node; dynamic trees follow EAGLE-2 (``draft_service.trees``). Draft
tokens are the top-k of the draft distribution -- for a sampled sequence with coupled drafting,
the first child is instead ``argmax(log q + g_i)`` under the target's own position-keyed noise
(Gumbel-max coupling, ``specgrove.sampling``), the token the target will pick whenever q is
close to p. Either way the trees are a deterministic function of the history, so acceptance
stays lossless. With tracing on, each forward is a ``draft.expand`` span:
``specgrove.tree.depth`` is the depth of the nodes it expands (0: the catch-up).
"""
from __future__ import annotations

from typing import Sequence

import torch

from draft_service.drafters.base import DraftInput
from draft_service.trees import TreeGrowth, frontier_item
from specgrove import telemetry
from specgrove.kv import KVCacheExhausted
from specgrove.runner import ForwardItem, ModelRunner
from specgrove.sampling import NoiseCache, sampled_tokens, target_logits
from specgrove.tree import TokenTree


class TreeDrafter:
    kind = ""
    feature_layers: tuple[int, ...] = ()

    def __init__(self, runner: ModelRunner, target_vocab_size: int,
                 vocab_map: torch.Tensor | None = None) -> None:
        """``vocab_map``: [V'] the target token id of each entry of the drafter's own vocabulary
        (a truncated draft vocabulary); None when the drafter predicts target ids directly."""
        self.runner = runner
        self.max_len = runner.config.max_positions
        self.target_vocab_size = target_vocab_size
        self.vocab_map = vocab_map
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
            if not inp.budget.speculates or room < 1:
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

    # --- what a drafter provides ------------------------------------------------------------------
    def _catch_up(self, inputs: Sequence[DraftInput], growths: list[TreeGrowth]) -> list[torch.Tensor]:
        """Run and commit every token not yet in the KV, root last; each root's logits [1, V']."""
        raise NotImplementedError

    def _expand(self, items: list[ForwardItem], owners: list[tuple[int, list[int]]],
                growths: list[TreeGrowth]) -> list[torch.Tensor]:
        """One forward over frontier items; each item's logits [n, V']."""
        return self.runner.forward(items)

    def _frontier(self, inp: DraftInput, growth: TreeGrowth, fed: list[int], frontier: list[int]) -> ForwardItem:
        return frontier_item(inp.seq_id, growth, fed, frontier, len(inp.history) - 1)

    # --- the shared tree growth ---------------------------------------------------------------------
    def _grow(self, inputs: Sequence[DraftInput]) -> list[TokenTree]:
        growths = [TreeGrowth.start(inp.history[-1], inp.budget) for inp in inputs]
        depth_limit = [min(inp.budget.depth, self.max_len - len(inp.history) - 1) for inp in inputs]
        with telemetry.span("draft.expand") as span:
            for inp, g, lg in zip(inputs, growths, self._catch_up(inputs, growths)):
                self._add_children(inp, g, [0], lg, 0)
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
                    batch.append(self._frontier(inp, g, fed[i], frontier))
                    owners.append((i, frontier))
                    fed[i] += frontier
                for (i, frontier), lg in zip(owners, self._expand(batch, owners, growths)):
                    self._add_children(inputs[i], growths[i], frontier, lg, depth)
                if span is not None:
                    span.set_attributes({"specgrove.tree.depth": depth, "specgrove.batch_size": len(batch),
                                         "specgrove.expand.nodes": sum(len(f) for _, f in owners)})
        for inp in inputs:
            self.runner.blocks.rollback(inp.seq_id)
        return [g.finish() for g in growths]

    def _add_children(self, inp: DraftInput, growth: TreeGrowth, nodes: list[int], logits: torch.Tensor,
                      depth: int) -> None:
        """Give each of ``nodes`` (all at ``depth``) its children from its row of draft logits
        ([len(nodes), V']): the top-k by draft log-probability, the first one chosen by the
        shared noise when coupled. One softmax and one top-k for all rows (per-node calls cost
        ~0.7 ms a step on a CPU)."""
        k = growth.children_wanted(depth)
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [n, V']
        if not inp.coupled:
            top = torch.topk(logprobs, k, dim=-1)  # [n, k]
            for node, ids, values in zip(nodes, self._target_ids(top.indices), top.values.tolist()):
                growth.add_children(node, ids, values)
            return
        for row, node in enumerate(nodes):
            lp = logprobs[row]  # [V']
            first = self._coupled_pick(inp, logits[row:row + 1], len(inp.history) + depth)
            rest = torch.topk(lp.index_fill(0, torch.tensor([first]), float("-inf")), k - 1)
            picks = torch.cat([torch.tensor([first]), rest.indices])
            # Under the shared noise the coupled child is the draft's best guess of the target's
            # pick whatever its own probability: rank it as confidently as a top-1 draft token,
            # so that dynamic trees keep the coupled path.
            growth.add_children(node, self._target_ids(picks), [lp.max().item()] + rest.values.tolist())

    def _coupled_pick(self, inp: DraftInput, logits: torch.Tensor, position: int) -> int:
        """argmax(log q + g) in the drafter's vocabulary, g the noise of ``position``."""
        noise = self._noise_of(inp).rows([position])  # [1, V_target]
        if self.vocab_map is not None:
            noise = noise[:, self.vocab_map]
        return sampled_tokens(target_logits(logits, inp.sampling), noise)[0]

    def _target_ids(self, indices: torch.Tensor) -> list:  # [n] or [n, k] draft ids -> target ids
        return (indices if self.vocab_map is None else self.vocab_map[indices]).tolist()

    def _noise_of(self, inp: DraftInput) -> NoiseCache:
        noise = self._noise.get(inp.seq_id)
        if noise is None or noise.seed != inp.sampling.seed:
            noise = self._noise[inp.seq_id] = NoiseCache(inp.sampling.seed, self.target_vocab_size,
                                                          self.runner.device)
        noise.forget_before(len(inp.history))
        return noise
