"""``specgrove trace FILE [--request ID] [--png OUT]``: what a trace file says about requests.

Prints every request (id, output tokens, steps, mean acceptance length, TTFT, TPOT, end to end),
then one request's step timeline: per step its batch, tree size and depth, accepted tokens, and
where the time went: draft (the draft service's Prefill / Propose calls), verify (the target's
Verify call; ``fwd`` is the target's forward inside it) and other (the rest of the gateway step:
releases, bookkeeping). ``--png`` draws the same timeline as a waterfall picture.
"""
from __future__ import annotations

from specgrove.cli.tracefile import RequestInfo, StepInfo, TraceIndex, read_spans


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def requests_table(reqs: list[RequestInfo]) -> str:
    head = (f"{'request':<34} {'status':<6} {'out':>5} {'steps':>5} {'tau':>5} "
            f"{'TTFT ms':>8} {'TPOT ms':>8} {'e2e ms':>8}  trace")
    lines = [head]
    for r in reqs:
        status = "error" if r.span.status == 2 else "ok"
        lines.append(f"{r.request_id[:34]:<34} {status:<6} {r.output_tokens:>5} {r.steps:>5} "
                     f"{r.mean_acceptance_length:>5.2f} {_ms(r.ttft_ms):>8} {_ms(r.tpot_ms):>8} "
                     f"{r.e2e_ms:>8.1f}  {r.span.trace_id}")
    return "\n".join(lines)


def timeline_table(req: RequestInfo, steps: list[StepInfo], prefill: list[tuple[float, float]]) -> str:
    lines = [f"timeline of {req.request_id} ({req.span.name}; trace {req.span.trace_id}):"]
    for a, b in prefill:
        lines.append(f"  prefill   at {a:8.1f} ms  took {b - a:7.1f} ms")
    if req.ttft_ms is not None:
        lines.append(f"  first token at {req.ttft_ms:.1f} ms")
    lines.append(f"  {'step':>4} {'at ms':>8} {'batch':>5} {'nodes':>5} {'depth':>5} {'acc':>4} "
                 f"{'draft':>7} {'verify':>7} {'(fwd)':>7} {'other':>7} {'total':>7}  drafter")
    for s in steps:
        lines.append(f"  {s.index:>4} {s.start_ms:>8.1f} {s.batch_size:>5} {s.tree_nodes:>5} "
                     f"{s.tree_depth:>5} {s.accepted:>4} {s.draft_ms:>7.2f} {s.verify_ms:>7.2f} "
                     f"{s.forward_ms:>7.2f} {s.other_ms:>7.2f} {s.total_ms:>7.2f}  {s.drafter}")
    if steps:
        n = len(steps)
        draft, verify = sum(s.draft_ms for s in steps), sum(s.verify_ms for s in steps)
        other, total = sum(s.other_ms for s in steps), sum(s.total_ms for s in steps)
        lines.append(f"  {n} steps, {total:.1f} ms: draft {draft:.1f} ({100 * draft / total:.0f}%), "
                     f"verify {verify:.1f} ({100 * verify / total:.0f}%), other {other:.1f} "
                     f"({100 * other / total:.0f}%); mean tree {sum(s.tree_nodes for s in steps) / n:.1f} "
                     f"nodes, mean accepted {sum(s.accepted for s in steps) / n:.2f}")
    else:
        lines.append("  no steps recorded for this request")
    return "\n".join(lines)


def run_trace(path: str, request_id: str | None = None, png: str | None = None) -> str:
    spans, bad = read_spans(path)
    index = TraceIndex(spans)
    reqs = index.requests()
    out = [f"{len(reqs)} requests, {len(spans)} spans in {path}"
           + (f" ({bad} unreadable lines skipped)" if bad else ""), requests_table(reqs), ""]
    req = index.find(request_id)
    steps, prefill = index.timeline(req), index.prefill_ms(req)
    if request_id is None and len(reqs) > 1:
        out.append("(the latest request; pick another with --request ID)")
    out.append(timeline_table(req, steps, prefill))
    if png:
        from specgrove.cli.trace_plot import draw_timeline

        draw_timeline(req, steps, prefill, png)
        out.append(f"wrote {png}")
    return "\n".join(out) + "\n"
