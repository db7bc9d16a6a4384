"""Prompt factory for self-distilling a feature drafter (EAGLE head) for a target chat model.

``specgrove distill`` trains the head to predict the *target's own* continuations, so what matters
is that the prompts make the target produce the kinds of answers it will give in service. No data
is downloaded (no hub, no datasets: the machines may be offline and we want no licensing
questions); every prompt is built here from word lists and templates (``prompt_words``) with a
seeded ``random.Random``.

Two stages:

* **Stage A** (:func:`seed_prompts`, :func:`passage_prompts`): standalone requests that need no
  source text: chat, code, qa, math, json, multi-part requests, translations of generated
  sentences, and "write a short paragraph / email / notice / product description / news item"
  requests. The answers to :func:`passage_prompts` (60-150 words each) become the source texts
  of stage B.
* **Stage B** (:func:`derived_prompts`): rewrite, summarize, rag (context + question), translate
  (sentences taken from a passage), JSON extraction and multi-turn follow-ups, all built on
  passages the target itself wrote, so the drafter also sees how the target copies and
  transforms text from its context.

The result is judged on a held-out set of prompts of the same kinds (chat, code, rewrite,
summarize, qa, math, translate, rag, json, multi), not on these prompts, so the factory aims for
breadth: hundreds of topics, many phrasings per category, random numbers, names, languages,
tones, lengths and formats, rather than many copies of a few requests.

Category mix over the whole run (``TARGET_MIX``): chat 20%, code 20%, rewrite 8%, summarize 8%,
qa 10%, math 10%, translate 6%, rag 8%, json 6%, multi 4%. Stage B supplies rewrite, summarize and
rag entirely, and half of translate and a third of json and multi (``STAGE_B_MIX``); stage A
supplies the rest (``STAGE_A_MIX``, 69% of the total). ``split_count(total)`` gives the two
counts; within one call each category gets its exact share (largest remainder), so a seed run of
N prompts plus a derived run of M = N * 31/69 prompts reproduces ``TARGET_MIX``.
"""
from __future__ import annotations

import random
from typing import Callable

from draft_service.training.prompt_stage_a import STAGE_A_BUILDERS, passage_request
from draft_service.training.prompt_stage_b import STAGE_B_BUILDERS, index_passage
from draft_service.training.prompt_templates import Prompt, single_turn

CATEGORIES = ("chat", "code", "rewrite", "summarize", "qa", "math", "translate", "rag", "json",
              "multi")
TARGET_MIX = {"chat": 0.20, "code": 0.20, "rewrite": 0.08, "summarize": 0.08, "qa": 0.10,
              "math": 0.10, "translate": 0.06, "rag": 0.08, "json": 0.06, "multi": 0.04}
STAGE_B_MIX = {"rewrite": 0.08, "summarize": 0.08, "rag": 0.08, "translate": 0.03, "json": 0.02,
               "multi": 0.02}
STAGE_A_MIX = {c: round(w - STAGE_B_MIX.get(c, 0.0), 4) for c, w in TARGET_MIX.items()
               if w > STAGE_B_MIX.get(c, 0.0)}
STAGE_A_SHARE = round(sum(STAGE_A_MIX.values()), 4)  # 0.69
_PATIENCE = 400  # consecutive duplicates before a category counts as exhausted


def split_count(total: int) -> tuple[int, int]:
    """(stage A count, stage B count) whose union follows TARGET_MIX."""
    a = round(total * STAGE_A_SHARE)
    return a, total - a


# --- assembly -------------------------------------------------------------------------------------
def _quotas(mix: dict[str, float], count: int) -> dict[str, int]:
    """Exact per-category counts for ``count`` prompts (largest remainder)."""
    total = sum(mix.values())
    raw = {c: count * w / total for c, w in mix.items()}
    quotas = {c: int(r) for c, r in raw.items()}
    by_remainder = sorted(raw, key=lambda c: raw[c] - quotas[c], reverse=True)
    for c in by_remainder[:count - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


def _draw(build: Callable[[random.Random], Prompt], rng: random.Random, want: int,
          seen: set, out: list[Prompt]) -> int:
    """Append up to ``want`` new prompts; stop early once ``build`` keeps repeating itself."""
    made = misses = 0
    while made < want and misses < _PATIENCE:
        prompt = build(rng)
        if prompt.key() in seen:
            misses += 1
            continue
        seen.add(prompt.key())
        out.append(prompt)
        made, misses = made + 1, 0
    return made


def _assemble(rng: random.Random, mix: dict[str, float],
              builders: dict[str, Callable[[random.Random], Prompt]], count: int) -> list[Prompt]:
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    seen: set = set()
    out: list[Prompt] = []
    short = sum(q - _draw(builders[c], rng, q, seen, out) for c, q in _quotas(mix, count).items())
    # A category whose template space ran out hands its share to the others, in turn.
    open_categories = list(mix)
    while short and open_categories:
        for category in list(open_categories):
            if short and _draw(builders[category], rng, 1, seen, out):
                short -= 1
            else:
                open_categories.remove(category)
    rng.shuffle(out)
    return out


def seed_prompts(seed: int, count: int) -> list[Prompt]:
    """Stage A: standalone prompts over all categories that need no source text
    (chat, code, qa, math, json, multi, translations of generated sentences, and "write a short
    paragraph / email / notice / product description / news item about X" requests that double
    as passage generators), mixed as STAGE_A_MIX."""
    return _assemble(random.Random(f"seed:{seed}"), STAGE_A_MIX, STAGE_A_BUILDERS, count)


def passage_prompts(seed: int, count: int) -> list[Prompt]:
    """Requests whose answers are short passages (60-150 words) on varied topics: these answers
    become the source texts of stage B."""
    def build(rng: random.Random) -> Prompt:
        return single_turn("chat", passage_request(rng))
    return _assemble(random.Random(f"passages:{seed}"), {"chat": 1.0}, {"chat": build}, count)


def derived_prompts(seed: int, passages: list[str], count: int) -> list[Prompt]:
    """Stage B: rewrite, summarize, rag (context + question about it), translate (a sentence
    taken from a passage, or generated), json extraction from a passage, and multi-turn
    follow-ups, built on the given passages (text the target wrote in stage A), mixed as
    STAGE_B_MIX. With very few passages the template space is small: a category that runs out
    hands its share to the others, and the list may come out shorter than ``count``."""
    indexed = [index_passage(p) for p in passages]
    # Fragments (a refusal, a one-liner) make poor source texts; use them only if nothing else.
    sources = [s for s in indexed if len(s.text.split()) >= 15] or [s for s in indexed if s.text]
    if not sources:
        raise ValueError("derived_prompts needs at least one non-empty passage")
    builders = {c: (lambda rng, f=f: f(rng, sources)) for c, f in STAGE_B_BUILDERS.items()}
    return _assemble(random.Random(f"derived:{seed}"), STAGE_B_MIX, builders, count)
