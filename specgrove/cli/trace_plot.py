"""One request's step timeline as a PNG (matplotlib, Agg backend: no display needed).

Left: a waterfall on the request's clock, one row per step: the whole step in grey ("other"),
the draft service calls in blue and the target's Verify in orange on top, where they happened;
the first row is the wait and prefill before the first token. Right: per step, the tree's size
next to the tokens the step produced (accepted + 1 bonus), so a large tree that bought little
shows at a glance.
"""
from __future__ import annotations

from specgrove.cli.tracefile import RequestInfo, StepInfo

MAX_ROWS = 200  # beyond this the rows would be too thin to read: the first steps are drawn
COLORS = {"draft": "#4C72B0", "verify": "#DD8452", "other": "#C8C8C8", "prefill": "#8172B3",
          "queue": "#EDEDED", "nodes": "#A6CEE3", "produced": "#1F78B4"}


def _title(req: RequestInfo, shown: int, total: int) -> str:
    parts = [req.request_id, f"{req.output_tokens} tokens in {req.steps} steps",
             f"mean acceptance length {req.mean_acceptance_length:.2f}"]
    if req.ttft_ms is not None:
        parts.append(f"TTFT {req.ttft_ms:.1f} ms")
    if req.tpot_ms is not None:
        parts.append(f"TPOT {req.tpot_ms:.2f} ms")
    title = "  |  ".join(parts)
    if shown < total:
        title += f"\n(first {shown} of {total} steps)"
    return title


def draw_timeline(req: RequestInfo, steps: list[StepInfo], prefill: list[tuple[float, float]],
                  out_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI have no display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    shown = steps[:MAX_ROWS]
    rows = len(shown) + 1
    height = 2.3 + 0.26 * rows
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, height), sharey=True,
                                 gridspec_kw={"width_ratios": [3.2, 1]}, squeeze=True)
    _waterfall(ax, req, shown, prefill)
    _tree_bars(bx, shown)
    ax.set_yticks(range(rows))
    ax.set_yticklabels(["prefill"] + [f"step {s.index}" for s in shown], fontsize=8)
    ax.set_ylim(rows - 0.5, -0.5)  # first step at the top
    fig.suptitle(_title(req, len(shown), len(steps)), fontsize=10)
    handles = [Patch(color=COLORS[k], label=label) for k, label in (
        ("queue", "waiting"), ("prefill", "prefill"), ("draft", "draft (Prefill/Propose)"),
        ("verify", "verify (Verify)"), ("other", "other (gateway, release)"),
        ("nodes", "tree nodes"), ("produced", "tokens produced (accepted + 1)"))]
    # One legend under both panels: inside them it would cover the last steps' bars.
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.4 / height, 1, 1 - 0.35 / height))  # room for legend and title
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def _waterfall(ax, req: RequestInfo, steps: list[StepInfo], prefill: list[tuple[float, float]]) -> None:
    first = req.ttft_ms if req.ttft_ms is not None else (prefill[-1][1] if prefill else 0.0)
    ax.broken_barh([(0.0, first)], (-0.35, 0.7), color=COLORS["queue"])
    ax.broken_barh([(a, b - a) for a, b in prefill], (-0.35, 0.7), color=COLORS["prefill"])
    for row, s in enumerate(steps, 1):
        ax.broken_barh([(s.start_ms, s.total_ms)], (row - 0.35, 0.7), color=COLORS["other"])
        ax.broken_barh([(a, b - a) for a, b in s.draft], (row - 0.35, 0.7), color=COLORS["draft"])
        ax.broken_barh([(a, b - a) for a, b in s.verify], (row - 0.35, 0.7), color=COLORS["verify"])
        ax.text(s.end_ms, row, f" {s.total_ms:.1f} ms", va="center", fontsize=7, color="#444444")
    end = max([req.e2e_ms] + [s.end_ms for s in steps])
    ax.set_xlim(0, end * 1.08 if end > 0 else 1)
    ax.set_xlabel("ms since the request arrived")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("step waterfall", fontsize=9)


def _tree_bars(bx, steps: list[StepInfo]) -> None:
    rows = [row for row in range(1, len(steps) + 1)]
    bx.barh(rows, [s.tree_nodes for s in steps], height=0.7, color=COLORS["nodes"])
    bx.barh(rows, [s.accepted + 1 for s in steps], height=0.4, color=COLORS["produced"])
    for row, s in zip(rows, steps):
        bx.text(max(s.tree_nodes, s.accepted + 1), row, f" {s.accepted}/{s.tree_nodes - 1}",
                va="center", fontsize=7, color="#444444")
    bx.set_xlabel("tokens")
    bx.grid(axis="x", alpha=0.3)
    bx.set_title("tree size vs accepted (acc/drafted)", fontsize=9)
    if steps:
        bx.set_xlim(0, max(max(s.tree_nodes, s.accepted + 1) for s in steps) * 1.35)
