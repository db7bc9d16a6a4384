"""``specgrove bench``'s outputs: ``results.json``, ``report.md`` and three PNG plots.

Throughput of a (setting, concurrency) is the median over repeats of generated tokens over the
run's wall time, shown with its range; the speedup divides it by the baseline setting's median
at the same concurrency. Latencies (TTFT, TPOT) are pooled over the repeats' requests. τ is the
mean tokens per verify step over the requests.
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from specgrove.cli.bench_run import Run


def _pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summarize(runs: list[Run], baseline: str) -> dict:
    groups: dict[tuple[str, int], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.setting, run.concurrency)].append(run)
    rows = []
    for (setting, conc), group in groups.items():
        tps = [r.tokens_per_s for r in group]
        reqs = [q for r in group for q in r.requests]
        positions = [r.accepted_per_pos for r in group if r.accepted_per_pos]
        depth = max((len(p) for p in positions), default=0)
        rows.append({
            "setting": setting, "concurrency": conc, "tokens_per_s": statistics.median(tps),
            "tokens_per_s_min": min(tps), "tokens_per_s_max": max(tps), "repeats": len(group),
            "tau": statistics.mean(q.tau for q in reqs),
            "ttft_p50_s": _pct([q.ttft_s for q in reqs], 0.5), "ttft_p99_s": _pct([q.ttft_s for q in reqs], 0.99),
            "tpot_p50_s": _pct([q.tpot_s for q in reqs], 0.5), "tpot_p99_s": _pct([q.tpot_s for q in reqs], 0.99),
            "drafted_tokens": sum(q.drafted for q in reqs) / len(group),
            "accepted_tokens": sum(q.accepted for q in reqs) / len(group),
            "accepted_per_position": [statistics.mean(p[i] if i < len(p) else 0.0 for p in positions)
                                      for i in range(depth)],
        })
    base = {r["concurrency"]: r["tokens_per_s"] for r in rows if r["setting"] == baseline}
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / base[r["concurrency"]] if base.get(r["concurrency"]) else None
    categories = []
    by_cat: dict[tuple[str, str], list] = defaultdict(list)
    lowest = min(r.concurrency for r in runs)
    for run in runs:
        if run.concurrency == lowest:  # per-request speed is only comparable without contention
            for q in run.requests:
                by_cat[(run.setting, q.category)].append(q)
    for (setting, cat), reqs in sorted(by_cat.items()):
        categories.append({"setting": setting, "category": cat, "concurrency": lowest,
                           "tau": statistics.mean(q.tau for q in reqs),
                           "tokens_per_s": sum(q.tokens for q in reqs) / sum(q.latency_s for q in reqs)})
    base_cat = {c["category"]: c["tokens_per_s"] for c in categories if c["setting"] == baseline}
    for c in categories:
        c["speedup"] = c["tokens_per_s"] / base_cat[c["category"]] if base_cat.get(c["category"]) else None
    return {"baseline": baseline, "rows": sorted(rows, key=lambda r: (r["concurrency"], r["setting"])),
            "categories": categories}


def _f(value, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def report_md(summary: dict, meta: dict) -> str:
    lines = ["# specgrove bench", "", f"Baseline: `{summary['baseline']}`. " + ", ".join(
        f"{k}: {v}" for k, v in meta.items()), "",
        "| setting | concurrency | tokens/s (median [min, max]) | speedup | τ | TTFT p50 / p99 ms | "
        "TPOT p50 / p99 ms | drafted | accepted |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(
            f"| {r['setting']} | {r['concurrency']} | {r['tokens_per_s']:.1f} [{r['tokens_per_s_min']:.1f}, "
            f"{r['tokens_per_s_max']:.1f}] | {_f(r['speedup'])}x | {r['tau']:.2f} | "
            f"{_f(r['ttft_p50_s'], 0, 1e3)} / {_f(r['ttft_p99_s'], 0, 1e3)} | "
            f"{_f(r['tpot_p50_s'], 1, 1e3)} / {_f(r['tpot_p99_s'], 1, 1e3)} | {r['drafted_tokens']:.0f} | "
            f"{r['accepted_tokens']:.0f} |")
    lines += ["", "Acceptance by draft position (accepted tokens per verified sequence):", "",
              "| setting | concurrency | " + " | ".join(f"pos {i}" for i in range(max(
                  (len(r["accepted_per_position"]) for r in summary["rows"]), default=0))) + " |"]
    depth = max((len(r["accepted_per_position"]) for r in summary["rows"]), default=0)
    lines.append("|---|---|" + "---|" * depth)
    for r in summary["rows"]:
        cells = [f"{v:.3f}" for v in r["accepted_per_position"]] + ["-"] * (depth - len(r["accepted_per_position"]))
        lines.append(f"| {r['setting']} | {r['concurrency']} | " + " | ".join(cells) + " |")
    lines += ["", "Per category (lowest concurrency; per-request tokens over latency):", "",
              "| setting | category | τ | tokens/s | speedup |", "|---|---|---|---|---|"]
    for c in summary["categories"]:
        lines.append(f"| {c['setting']} | {c['category']} | {c['tau']:.2f} | {c['tokens_per_s']:.1f} | "
                     f"{_f(c['speedup'])}x |")
    return "\n".join(lines) + "\n"


def plots(summary: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    settings = sorted({r["setting"] for r in summary["rows"]})
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in settings:
        pts = sorted((r["concurrency"], r["speedup"]) for r in summary["rows"] if r["setting"] == s and r["speedup"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set(xlabel="concurrency", ylabel=f"speedup vs {summary['baseline']}", title="Throughput speedup")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "speedup_vs_concurrency.png")
    written.append("speedup_vs_concurrency.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in summary["rows"]:
        if r["accepted_per_position"]:
            ax.plot(range(len(r["accepted_per_position"])), r["accepted_per_position"], marker="o",
                    label=f"{r['setting']} c={r['concurrency']}")
    ax.set(xlabel="draft position (0 = first)", ylabel="accepted per verified sequence",
           title="Acceptance by position")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "acceptance_per_position.png")
    written.append("acceptance_per_position.png")
    plt.close(fig)

    cats = sorted({c["category"] for c in summary["categories"]})
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(settings), 1)
    for i, s in enumerate(settings):
        tau = {c["category"]: c["tau"] for c in summary["categories"] if c["setting"] == s}
        ax.bar([j + i * width for j in range(len(cats))], [tau.get(c, 0) for c in cats], width, label=s)
    ax.set_xticks([j + width * (len(settings) - 1) / 2 for j in range(len(cats))], cats, rotation=30)
    ax.set(ylabel="τ (tokens per step)", title="τ per category")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # beside the bars, not on them
    fig.tight_layout()
    fig.savefig(out / "tau_per_category.png")
    written.append("tau_per_category.png")
    plt.close(fig)
    return written


def write(out: Path, runs: list[Run], baseline: str, meta: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs, baseline)
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": [asdict(r) for r in runs]}, indent=1))
    (out / "report.md").write_text(report_md(summary, meta))
    summary["plots"] = plots(summary, out)
    return summary
