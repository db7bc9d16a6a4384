"""What ``specgrove replay`` reports: tau, acceptance by draft position, steps, drafted and
accepted tokens, the expected speedup, per category, and how the replay compares with what
the gateway reported live for the same requests.

Definitions (the gateway's own, ``gateway.job.JobStats`` and the ``spec_decode`` counters):
tau = (accepted + steps) / steps; ``acceptance_per_position[i]`` = the fraction of verify steps
that accepted more than i draft tokens. Hence tau = 1 + sum(acceptance_per_position).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from specgrove.cli.recordfile import tree_json
from specgrove.cli.replay_costs import CostModel
from specgrove.cli.replay_loop import Replayed, Step


def _stats(steps: Sequence[Step]) -> dict:
    n = len(steps)
    accepted = sum(s.accepted for s in steps)
    deepest = max((s.accepted for s in steps), default=0)
    per_pos = [sum(1 for s in steps if s.accepted > i) / n for i in range(deepest)] if n else []
    drafting = [s for s in steps if s.drafted]
    return {"mean_acceptance_length": (accepted + n) / n if n else 0.0,
            "acceptance_per_position": [round(p, 6) for p in per_pos],
            "steps": n, "drafted_tokens": sum(s.nodes - 1 for s in steps), "accepted_tokens": accepted,
            "draft_ms_per_step": 1e3 * sum(s.draft_s for s in drafting) / len(drafting) if drafting else 0.0}


def _same_setting(r: Replayed) -> bool:
    """Whether the replay ran the request's live drafter (by name) and tree: only then can it
    be compared step for step."""
    live = r.record.live
    return live is not None and live.drafter == r.drafter and live.tree == tree_json(r.budget)


def _live(results: Sequence[Replayed]) -> dict | None:
    """The live stats of the records, and how many requests replay step for step."""
    lives = [(r, r.record.live) for r in results if r.record.live is not None]
    if not lives:
        return None
    steps = sum(l.steps for _, l in lives)
    accepted = sum(l.accepted_tokens for _, l in lives)
    comparable = [(r, l) for r, l in lives if l.step_accepted is not None and _same_setting(r)]
    return {"mean_acceptance_length": (accepted + steps) / steps if steps else 0.0,
            "steps": steps, "accepted_tokens": accepted, "drafted_tokens": sum(l.drafted_tokens for _, l in lives),
            "drafters": sorted({l.drafter for _, l in lives}),
            "adaptive": any(l.adaptive for _, l in lives),
            # Requests replayed with their live drafter and tree, and those of them whose
            # accepted count matched the stream's at every step.
            "requests_compared": len(comparable),
            "requests_equal_step_for_step": sum(1 for r, l in comparable if r.step_accepted == l.step_accepted),
            "seconds": sum(l.seconds for _, l in lives)}


def summarize(results: Sequence[Replayed], costs: CostModel | None, meta: dict,
              per_request: bool = False) -> dict:
    steps = [s for r in results for s in r.steps]
    out = {**meta, "requests": len(results), "output_tokens": sum(len(r.record.output_ids) for r in results),
           **_stats(steps)}
    out["expected_speedup"] = costs.expected_speedup(steps) if costs is not None else None
    out["cost_model"] = costs.to_json() if costs is not None else None
    by_cat: dict[str, list[Step]] = defaultdict(list)
    for r in results:
        by_cat[r.record.category].extend(r.steps)
    out["per_category"] = {c: {**_stats(s), "expected_speedup": costs.expected_speedup(s) if costs else None}
                           for c, s in sorted(by_cat.items())}
    out["live"] = _live(results)
    if per_request:
        out["per_request"] = [
            {"id": r.record.id, "category": r.record.category, "steps": len(r.steps),
             "mean_acceptance_length": r.mean_acceptance_length, "drafted_tokens": r.drafted_tokens,
             "accepted_tokens": r.accepted_tokens, "step_accepted": list(r.step_accepted),
             "live_step_accepted": (list(r.record.live.step_accepted)
                                    if r.record.live is not None and r.record.live.step_accepted is not None else None)}
            for r in results]
    return out


def text(summary: dict) -> str:
    s = summary
    pos = " ".join(f"{p:.2f}" for p in s["acceptance_per_position"]) or "-"
    lines = [f"replayed {s['requests']} requests ({s['output_tokens']} output tokens) with {s['drafter']}, "
             f"tree {s['tree']}, in {s['replay_seconds']:.2f} s",
             f"  tau (tokens per step)    {s['mean_acceptance_length']:.3f}",
             f"  steps                    {s['steps']}",
             f"  drafted / accepted       {s['drafted_tokens']} / {s['accepted_tokens']}",
             f"  acceptance by position   {pos}",
             f"  draft time per step      {s['draft_ms_per_step']:.2f} ms (measured here)"]
    if s["expected_speedup"] is not None:
        cm = s["cost_model"]
        lines.append(f"  expected speedup         {s['expected_speedup']:.2f}x  (verify: {cm['verify_source']}; "
                     f"draft: {cm['draft_source']})")
    else:
        lines.append("  expected speedup         - (no verify costs: --calibrate, --costs or --verify-cost-ms)")
    live = s["live"]
    if live is not None:
        same = (f"{live['requests_equal_step_for_step']}/{live['requests_compared']} requests equal step for step"
                if live["requests_compared"] else "another drafter or tree: no step comparison")
        lines.append(f"  live (as recorded)       tau {live['mean_acceptance_length']:.3f} with "
                     f"{', '.join(live['drafters'])}{' (adaptive)' if live['adaptive'] else ''}; {same}; "
                     f"{live['seconds']:.1f} s of requests")
    if len(s["per_category"]) > 1:
        lines.append("  per category:")
        for cat, c in s["per_category"].items():
            sp = f", speedup {c['expected_speedup']:.2f}x" if c["expected_speedup"] is not None else ""
            lines.append(f"    {cat:<16} tau {c['mean_acceptance_length']:.3f}, {c['steps']} steps{sp}")
    return "\n".join(lines) + "\n"
