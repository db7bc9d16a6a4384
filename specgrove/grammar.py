"""Structured output: a grammar as a token mask at every tree node, so speculation stays lossless.

A request's grammar (``specgrove.types.Grammar``: a JSON object, a JSON Schema, a regular
expression or a choice of strings) is compiled with XGrammar (Dong et al. 2024, "XGrammar:
Flexible and Efficient Structured Generation Engine for Large Language Models") against the
target's vocabulary: a pushdown automaton whose per-state token masks are mostly precomputed, and
a ``GrammarMatcher`` that follows the tokens generated so far and writes the tokens the grammar
allows next as a bitmask (one bit per token, ``[ceil(V / 32)]`` int32 per row).

The grammar shapes the target distribution ``p``, so like the other history-dependent logits
processors (``specgrove.logits_processors``) it is applied to every tree node with that node's
own history: the sequence's output so far (the pending root included) and then the tokens on the
path from the root to the node. One matcher per sequence stands at the committed output; a verify
walks the tree depth-first on it (``fill_tree_bitmask``): fill the node's row, accept a child's
token, visit the child, roll the token back (XGrammar's Earley-based matcher rolls back without
limit). A draft token the grammar refuses is not entered: its subtree keeps an all-allowed row,
which never decides an emitted token, because the target's token at the parent is grammatical
and so never equals the refused child. The same walk prunes such tokens before the verify
forward (``GrammarState.prune``), so a forbidden draft costs no verified node. The mask sets disallowed logits to ``-inf`` before
temperature, top-k/p and the Gumbel noise, so greedy and sampled acceptance both see the masked
``p`` and the lossless rules of ``specgrove.sampling`` hold unchanged. Once the grammar is
complete its mask allows only the end-of-sequence tokens, so the request ends with "stop".

Importing ``xgrammar`` takes seconds (it loads torch and its own runtime), so it happens on the
first request that asks for a grammar (``GrammarCompiler.build``), not at start-up.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch

from specgrove.errors import InvalidRequest
from specgrove.tree import TokenTree
from specgrove.sampling_params import Grammar

_BITS = 32  # tokens per bitmask word (XGrammar's int32 words, bit t % 32 of word t // 32)
# XGrammar's errors start with "[hh:mm:ss] /path/file.cc:line: " and "Check failed: (...) is false: ".
_NOISE = re.compile(r"^\[[0-9:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")


def bitmask_words(vocab: int) -> int:
    return -(-vocab // _BITS)


def all_allowed(rows: int, vocab: int) -> torch.Tensor:  # [rows, ceil(V / 32)] int32, every bit set
    return torch.full((rows, bitmask_words(vocab)), -1, dtype=torch.int32)


def allowed_tokens(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """Unpack ``bitmask`` [R, ceil(V / 32)] int32 into [R, V] bool (True: the grammar allows it)."""
    shifts = torch.arange(_BITS, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [R, W, 32]; >> on int32 keeps bit 31 as sign, & 1 drops it
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab].bool()


def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Set every token the rows of ``bitmask`` ([N, ceil(V / 32)] int32) do not allow to
    ``-inf`` in ``logits`` [N, V], in place; returns ``logits``. XGrammar's kernel does it for
    float32 / bfloat16 / float16 (C++ on CPU, Triton or CUDA on GPUs: ~0.06 ms a row at V = 49152
    on one CPU core, 4x faster than unpacking the bits with torch ops); float64 logits (the
    exact-equality tests' models) are masked by unpacking."""
    bitmask = bitmask.to(logits.device, non_blocking=True)
    if logits.dtype == torch.float64:
        return logits.masked_fill_(~allowed_tokens(bitmask, logits.shape[-1]), float("-inf"))
    import xgrammar

    xgrammar.apply_token_bitmask_inplace(logits, bitmask)
    return logits


def fill_tree_bitmask(matcher, tree: TokenTree, bitmask: torch.Tensor | None) -> list[int]:
    """Row ``u`` of ``bitmask`` ([N, ceil(V / 32)] int32, all ones on entry) := the tokens the
    grammar allows after node ``u``'s history (``None``: fill nothing). Returns the grammatical
    nodes in index order: the root and every node whose whole path the grammar accepts (an
    end-of-sequence node included, not what hangs below it) -- the only nodes the target can
    ever accept.

    ``matcher`` (an ``xgrammar.GrammarMatcher``) stands at the root's history: everything up to
    and including the root token (the pending token; at prefill the prompt's last token, which
    is no output). It is left there. Nodes are visited in depth-first preorder, so between a
    node and any later node of its subtree the matcher only ever holds paths inside that
    subtree: rolling back to the parent's depth puts it at the parent's history.
    """
    if bitmask is not None:
        matcher.fill_next_token_bitmask(bitmask, 0)
    grammatical = [0]
    live = [False] * len(tree)  # the matcher can stand at this node (its row is filled)
    live[0] = True
    held = 0  # tokens the matcher holds beyond the root
    for u in _preorder(tree):
        parent = tree.parents[u]
        if not live[parent]:
            continue  # below a refused token or a completed grammar: never emitted
        depth = tree.depths[u]
        if held > depth - 1:
            matcher.rollback(held - (depth - 1))
        held = depth - 1
        if not matcher.accept_token(tree.token_ids[u]):
            continue  # a draft token the grammar refuses: the parent's target token never equals it
        held = depth
        grammatical.append(u)
        # After an end-of-sequence token the grammar is complete and has no next-token mask;
        # whatever the tree holds below it is cut by the step loop at that token.
        if not matcher.is_terminated():
            if bitmask is not None:
                matcher.fill_next_token_bitmask(bitmask, u)
            live[u] = True
    if held:
        matcher.rollback(held)
    return sorted(grammatical)


def _preorder(tree: TokenTree) -> list[int]:
    """The nodes after the root in depth-first preorder (children in their tree order)."""
    order, stack = [], list(reversed(tree.children[0]))
    while stack:
        u = stack.pop()
        order.append(u)
        stack.extend(reversed(tree.children[u]))
    return order


class GrammarState:
    """One sequence's matcher, standing at its committed output (the pending root included)."""

    def __init__(self, compiled, output: Sequence[int] = ()) -> None:
        import xgrammar

        self.matcher = xgrammar.GrammarMatcher(compiled)
        self.complete = False  # an end-of-sequence token was accepted (or a token refused)
        self.extend(output)

    def extend(self, tokens: Sequence[int]) -> None:
        """Tokens appended to the output (a step's accepted tokens and its bonus). Masked
        sampling only emits grammatical tokens; the tokens past an end-of-sequence token that
        a step may accept are cut by the step loop, so they end the matcher's walk here."""
        for t in tokens:
            if self.complete or not self.matcher.accept_token(t) or self.matcher.is_terminated():
                self.complete = True
                return

    def prune(self, tree: TokenTree) -> tuple[TokenTree, list[int]]:
        """``tree`` without the drafted tokens the grammar forbids (and what hangs below them),
        so they never cost a verified node; and, per kept node, its index in ``tree``. Lossless:
        a refused token never equals the target's grammatical pick at its parent."""
        if self.complete or len(tree) == 1:
            return tree, list(range(len(tree)))
        kept = fill_tree_bitmask(self.matcher, tree, None)
        return (tree if len(kept) == len(tree) else tree.subtree(kept)), kept

    def mask_(self, logits: torch.Tensor, tree: TokenTree | None) -> torch.Tensor:
        """Set the tokens the grammar forbids at each node to ``-inf`` in ``logits`` [N, V] (one
        row per node of ``tree``; None: one row, at prefill), in place; returns ``logits``."""
        if tree is None:  # prefill: the root is the prompt's last token, never accepted here
            tree = TokenTree.root_only(0)
        if self.complete:  # nothing after the end is emitted; leave the rows as they are
            return logits
        bitmask = all_allowed(len(tree), logits.shape[-1])  # [N, ceil(V / 32)] int32
        fill_tree_bitmask(self.matcher, tree, bitmask)
        return apply_bitmask_(logits, bitmask)


class GrammarCompiler:
    """Compiles requests' grammars against one target's tokenizer (built on first use, one per
    target). XGrammar caches compiled grammars by their text, so a schema sent again costs a
    lookup. Errors in a grammar become ``InvalidRequest`` naming ``grammar``."""

    def __init__(self, compiler) -> None:
        self._compiler = compiler

    @staticmethod
    def build(model_dir: str | Path, vocab_size: int, stop_ids: Sequence[int]) -> "GrammarCompiler":
        """From the tokenizer in ``model_dir``; rows past the tokenizer (padding) are never
        allowed. ``stop_ids``: the model's end-of-sequence tokens (with the tokenizer's own),
        the only tokens allowed once the grammar is complete."""
        import xgrammar
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        stops = sorted({*stop_ids, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stops)
        return GrammarCompiler(xgrammar.GrammarCompiler(info))

    def compile(self, grammar: Grammar):
        """The ``xgrammar.CompiledGrammar`` of ``grammar``. JSON is compact (``", "`` and
        ``": "`` separators, no other whitespace): free whitespace lets a model pad forever."""
        try:
            if grammar.kind == "json_object":
                return self._compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if grammar.kind == "json_schema":
                return self._compiler.compile_json_schema(grammar.spec, any_whitespace=False)
            if grammar.kind == "regex":
                return self._compiler.compile_regex(grammar.spec)
            # JSON string literals are valid EBNF string literals (quotes, backslashes, \n, \uXXXX).
            alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in grammar.choices)
            return self._compiler.compile_grammar(f"root ::= {alternatives}")
        except (RuntimeError, ValueError, TypeError) as exc:
            what = {"json_schema": "JSON schema", "regex": "regular expression"}.get(grammar.kind, grammar.kind)
            raise InvalidRequest("grammar", f"the {what} does not compile: {_clean(exc)}") from exc


def _clean(exc: Exception) -> str:
    """XGrammar's message without its C++ source location, on one line."""
    text = _NOISE.sub("", str(exc).strip())
    return " ".join(text.split())[:500]
