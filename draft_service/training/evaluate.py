"""How well a head drafts: mean acceptance length tau on held-out prompts, measured exactly by
running them through the step loop (in-process ports) with the head as drafter, greedy."""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Sequence

from draft_service.drafters.eagle.head import EagleHead
from specgrove.sampling_params import SamplingParams
from specgrove.types import TreeBudget


def acceptance(target, head: EagleHead, embed, run, encoded: Sequence[tuple[str, tuple[int, ...]]],
               budget: TreeBudget, max_new_tokens: int) -> dict:
    """tau overall and per category (``encoded``: (category, prompt ids))."""
    from draft_service.engine import DraftEngine
    from draft_service.factory import eagle_drafter
    from draft_service.local import LocalDraft
    from gateway.job import JobSpec
    from gateway.offline import complete

    state = {k: v.detach().float() for k, v in head.state_dict().items()}
    drafter = eagle_drafter(head.cfg, state, embed, run)
    draft = LocalDraft(DraftEngine.of({"eagle": drafter}, "eagle"), head.cfg.target_vocab_size)
    specs = [JobSpec(ids, max_new_tokens, SamplingParams(), drafter="eagle", budget=budget)
             for _, ids in encoded]
    try:
        outs = asyncio.run(complete(target, draft, specs))
    finally:
        draft.thread.shutdown()
        draft.loader.shutdown()
    by_category: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (category, _), out in zip(encoded, outs):
        by_category[category].append((out.stats.accepted_tokens, out.stats.steps))
        by_category["overall"].append((out.stats.accepted_tokens, out.stats.steps))
    return {name: (sum(a for a, _ in v) + sum(s for _, s in v)) / max(1, sum(s for _, s in v))
            for name, v in by_category.items()}
