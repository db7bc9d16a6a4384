"""In-process target engine: prefill a batch, verify a batch of token trees, release.

Per sequence the KV cache holds the committed tokens ``[0, L)`` and the engine remembers the
pending token (sampled, not yet run). ``verify`` writes every tree node at its own slot after
``L``, runs one forward over all nodes of all sequences, accepts a path per sequence with the
lossless rules of ``specgrove.sampling``, commits the path's K/V to ``L+1 .. L+k`` and returns
accepted tokens plus the bonus token (DESIGN "One step", 3). A sequence whose drafter needs
features (EAGLE) names target layers at prefill; it then gets the hidden states of the prompt
and of every token a verify commits, taken in the same forward (others pay nothing). With
tracing on, the phases are the spans ``target.forward``, ``target.accept`` and
``target.commit`` under the RPC's span.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from specgrove import telemetry
from specgrove.grammar import GrammarCompiler
from specgrove.kv import KVCacheExhausted
from specgrove.logits_processors import OutputHistory, process_logits
from specgrove.logprobs import token_logprobs
from specgrove.runner import ForwardItem, ForwardOutput, ModelRunner
from specgrove.sampling import NoiseCache, accept_path, target_tokens
from specgrove.tree import TokenTree
from specgrove.errors import InvalidRequest, UnknownSequence
from specgrove.sampling_params import SamplingParams
from specgrove.types import Features, PrefillRequest, PrefillResult, VerifyItem, VerifyResult


@dataclass
class _SeqState:
    sampling: SamplingParams  # seeded: the seed keys the sampling noise
    noise: NoiseCache | None  # None for greedy sequences
    feature_layers: tuple[int, ...] = ()  # sorted; () = no features
    pending: int = -1
    history: OutputHistory | None = None  # what the logits processors need (penalties ...)


@dataclass(frozen=True)
class EngineCapacity:
    total_blocks: int
    free_blocks: int
    block_size: int
    max_model_len: int


class TargetEngine:
    def __init__(self, runner: ModelRunner, max_model_len: int | None = None) -> None:
        self.runner = runner
        self.vocab_size = runner.config.vocab_size
        self.max_model_len = min(max_model_len or runner.config.max_positions, runner.config.max_positions)
        self._seqs: dict[int, _SeqState] = {}
        self._grammars: GrammarCompiler | None = None  # built at the first request with a grammar

    # --- public API --------------------------------------------------------------------------
    def capacity(self) -> EngineCapacity:
        bm = self.runner.blocks
        return EngineCapacity(bm.num_blocks, bm.num_free_blocks, bm.block_size, self.max_model_len)

    @property
    def num_sequences(self) -> int:
        return len(self._seqs)

    def has_sequence(self, seq_id: int) -> bool:
        return seq_id in self._seqs

    def committed_len(self, seq_id: int) -> int:
        return self.runner.blocks.committed_len(self._state_id(seq_id))

    def prefill(self, requests: Sequence[PrefillRequest]) -> list[PrefillResult]:
        """Compute prompt KV for a batch and sample each sequence's first (pending) token."""
        if not requests:
            return []
        self._check_prefill(requests)
        grammars = [self._compile_grammar(r.sampling) for r in requests]
        bm = self.runner.blocks
        need = sum(bm.blocks_for(len(r.prompt_ids)) for r in requests)
        if need > bm.num_free_blocks:
            raise KVCacheExhausted(f"prompts need {need} KV blocks, {bm.num_free_blocks} are free")
        for r, grammar in zip(requests, grammars):
            bm.add_sequence(r.seq_id)
            self._seqs[r.seq_id] = self._new_state(r, grammar)
        # A request whose prompt repeats an earlier one's in this batch (the n choices of one
        # request, or equal prompts) is that one's twin: one forward per distinct prompt, then
        # the twin's KV is copied and it samples its own first token from the same logits.
        row_of: dict[tuple, int] = {}  # (prompt, output count, feature layers) -> forward item
        source = [row_of.setdefault((r.prompt_ids, r.num_output_tokens, r.feature_layers), len(row_of))
                  for r in requests]
        firsts = [requests[source.index(row)] for row in range(len(row_of))]
        items = [ForwardItem(r.seq_id, r.prompt_ids, range(len(r.prompt_ids)),
                             capture=bool(r.feature_layers)) for r in firsts]
        try:
            out, layers = self._forward(items)
        except BaseException:
            for r in requests:
                self.release(r.seq_id)
            raise
        self.runner.commit_many([(r.seq_id, len(r.prompt_ids), None) for r in firsts])
        twins = [(firsts[row].seq_id, r.seq_id) for r, row in zip(requests, source)
                 if r.seq_id != firsts[row].seq_id]
        self.runner.copy_prefixes(twins)
        results = []
        for r, row in zip(requests, source):
            i, lg = row, out.logits[row]
            state = self._seqs[r.seq_id]
            # A root-only tree at the last prompt token: its "bonus" is the first new token.
            _, first = self._accept(TokenTree.root_only(0), lg, state, len(r.prompt_ids) - 1, prefill=True)
            state.pending = first
            state.history.extend([first])
            logprobs = token_logprobs(lg[-1:], [first], state.sampling.logprobs)
            results.append(PrefillResult(r.seq_id, first, self._features(out, layers, i, state, None),
                                         logprobs[0] if logprobs else None))
        return results

    def verify(self, items: Sequence[VerifyItem]) -> list[VerifyResult]:
        """One forward over every node of every tree; accept, commit, return tokens."""
        if not items:
            return []
        self._check_verify(items)
        bm = self.runner.blocks
        # Structured output: drafted tokens the grammar forbids are dropped before the forward;
        # kept[i][n] is node n's index in the tree as drafted (what accepted_nodes report).
        pruned = [self._grammatical(it) for it in items]
        trees, kept = [t for t, _ in pruned], [k for _, k in pruned]
        forward = []
        for it, tree in zip(items, trees):
            base = bm.committed_len(it.seq_id)
            # A root-only tree (plain decoding) is causal: no mask, the fast attention path.
            mask = tree.ancestor_mask() if len(tree) > 1 else None
            forward.append(ForwardItem(
                it.seq_id, tree.token_ids, tree.positions(base),
                tree_mask=mask, all_logits=True, capture=bool(self._seqs[it.seq_id].feature_layers),
            ))
        try:
            out, layers = self._forward(forward)
        except BaseException:
            for it in items:
                bm.rollback(it.seq_id)
            raise
        results, commits = [], []
        with telemetry.span("target.accept") as span:
            for i, (it, tree, lg) in enumerate(zip(items, trees, out.logits)):
                state = self._seqs[it.seq_id]
                path, bonus = self._accept(tree, lg, state, bm.committed_len(it.seq_id))
                commits.append((it.seq_id, len(path) + 1, [0] + path))
                state.pending = bonus
                tokens = tuple(tree.token_ids[n] for n in path)
                state.history.extend(tokens + (bonus,))
                features = self._features(out, layers, i, state, [0] + path)
                # Rows [0] + path: the root's logits produced the first new token, each
                # accepted node's the next one (the last node's, the bonus).
                logprobs = token_logprobs(lg[[0] + path], list(tokens) + [bonus], state.sampling.logprobs)
                results.append(VerifyResult(it.seq_id, tokens, bonus, tuple(kept[i][n] for n in path),
                                            features, logprobs))
            if span is not None:
                span.set_attribute("specgrove.accepted_tokens",
                                   sum(len(r.accepted_tokens) for r in results))
        with telemetry.span("target.commit") as span:
            self.runner.commit_many(commits)
            if span is not None:
                span.set_attribute("specgrove.kv.blocks_used", bm.num_blocks - bm.num_free_blocks)
        return results

    def release(self, seq_id: int) -> None:
        """Free a sequence's blocks; releasing an unknown or released sequence is a no-op."""
        self._seqs.pop(seq_id, None)
        self.runner.blocks.free(seq_id)

    # --- internals ---------------------------------------------------------------------------
    def _grammatical(self, item: VerifyItem) -> tuple[TokenTree, list[int]]:
        """The item's tree without what its grammar forbids, and each kept node's index."""
        history = self._seqs[item.seq_id].history
        grammar = history.grammar if history is not None else None
        if grammar is None:
            return item.tree, list(range(len(item.tree)))
        return grammar.prune(item.tree)

    def _forward(self, items: list[ForwardItem]) -> tuple[ForwardOutput, list[int]]:
        layers = sorted({l for it in items if it.capture for l in self._seqs[it.seq_id].feature_layers})
        with telemetry.span("target.forward") as span:
            if span is not None:
                span.set_attribute("specgrove.tokens", sum(len(it.token_ids) for it in items))
            return self.runner.run(items, capture_layers=layers), layers

    @staticmethod
    def _features(out: ForwardOutput, layers: list[int], i: int, state: _SeqState,
                  rows: list[int] | None) -> Features | None:
        """Item i's captured hidden states at its own layers (``rows`` of them, or all)."""
        captured = out.features[i]  # [n, len(layers) * d]
        if captured is None:
            return None
        width = captured.shape[-1] // len(layers)
        blocks = [layers.index(l) for l in state.feature_layers]
        cols = torch.cat([torch.arange(b * width, (b + 1) * width) for b in blocks])
        picked = captured[:, cols] if rows is None else captured[rows][:, cols]
        return Features.from_tensor(picked)

    def _compile_grammar(self, sampling: SamplingParams):
        """The request's grammar compiled for this target's vocabulary (None without one),
        before any state changes: a grammar that does not compile fails the batch cleanly."""
        if sampling.grammar is None:
            return None
        cfg = self.runner.config
        if self._grammars is None:
            if not cfg.path:
                raise InvalidRequest("sampling.grammar", "this target has no tokenizer to compile grammars with")
            self._grammars = GrammarCompiler.build(cfg.path, self.vocab_size, cfg.eos_token_ids)
        try:
            return self._grammars.compile(sampling.grammar)
        except InvalidRequest as exc:
            raise InvalidRequest(f"sampling.{exc.field}", exc.reason) from exc

    def _new_state(self, r: PrefillRequest, grammar=None) -> _SeqState:
        sampling = r.sampling.seeded()
        noise = None if sampling.greedy else NoiseCache(sampling.seed, self.vocab_size, self.runner.device)
        split = len(r.prompt_ids) - r.num_output_tokens
        history = OutputHistory.start(sampling, r.prompt_ids[:split], r.prompt_ids[split:],
                                      self.vocab_size, self.runner.device, grammar)
        return _SeqState(sampling, noise, tuple(sorted(set(r.feature_layers))), history=history)

    def _accept(self, tree: TokenTree, logits: torch.Tensor, state: _SeqState, root_position: int,
                prefill: bool = False):
        """Accept a path of ``tree`` whose root sits at ``root_position``; logits: [N, V]. At
        prefill the root is the last prompt token, not output: no path of its own to count."""
        positions = [root_position + d + 1 for d in tree.depths]  # what each node predicts
        logits = process_logits(logits, state.sampling, state.history, None if prefill else tree,
                                self.runner.config.eos_token_ids)
        path, bonus = accept_path(tree, target_tokens(logits, state.sampling, positions, state.noise))
        if state.noise is not None:  # positions up to the bonus token are decided for good
            state.noise.forget_before(root_position + len(path) + 2)
        return path, bonus

    def _state_id(self, seq_id: int) -> int:
        if seq_id not in self._seqs:
            raise UnknownSequence(f"unknown sequence {seq_id}")
        return seq_id

    def _check_prefill(self, requests: Sequence[PrefillRequest]) -> None:
        ids = [r.seq_id for r in requests]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("seq_id", "duplicate sequence ids in one prefill")
        for r in requests:
            if r.seq_id in self._seqs:
                raise InvalidRequest("seq_id", f"sequence {r.seq_id} already exists")
            if not r.prompt_ids:
                raise InvalidRequest("prompt_ids", "the prompt is empty")
            if len(r.prompt_ids) >= self.max_model_len:
                raise InvalidRequest(
                    "prompt_ids",
                    f"prompt of {len(r.prompt_ids)} tokens leaves no room in the context "
                    f"of {self.max_model_len} tokens",
                )
            self._check_tokens("prompt_ids", r.prompt_ids)
            if not 0 <= r.num_output_tokens < len(r.prompt_ids):
                raise InvalidRequest("num_output_tokens", f"must be in [0, {len(r.prompt_ids)}), "
                                                          f"got {r.num_output_tokens}")
            self._check_tokens("sampling.logit_bias", [t for t, _ in r.sampling.logit_bias])
            self._check_tokens("sampling.stop_token_ids", r.sampling.stop_token_ids)
            layers = self.runner.config.num_layers
            bad = next((l for l in r.feature_layers if not 0 <= l < layers), None)
            if bad is not None:
                raise InvalidRequest("feature_layers", f"layer {bad} is not one of the target's "
                                     f"{layers} layers (0 .. {layers - 1})")

    def _check_verify(self, items: Sequence[VerifyItem]) -> None:
        ids = [it.seq_id for it in items]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("seq_id", "duplicate sequence ids in one verify")
        for it in items:
            state = self._seqs.get(it.seq_id)
            if state is None:
                raise UnknownSequence(f"unknown sequence {it.seq_id}")
            if it.tree.token_ids[0] != state.pending:
                raise InvalidRequest(
                    "tree.token_ids", f"root {it.tree.token_ids[0]} is not the pending token {state.pending}"
                )
            self._check_tokens("tree.token_ids", it.tree.token_ids)
            base = self.runner.blocks.committed_len(it.seq_id)
            if base + len(it.tree) > self.max_model_len:
                raise InvalidRequest(
                    "tree", f"{len(it.tree)} nodes after {base} tokens exceed the context of "
                    f"{self.max_model_len} tokens",
                )

    def _check_tokens(self, field: str, tokens: Sequence[int]) -> None:
        bad = next((t for t in tokens if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(field, f"token {bad} is outside the vocabulary of {self.vocab_size}")
