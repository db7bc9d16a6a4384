"""The cost model behind ``specgrove replay``'s expected speedup, and its calibration.

Replay knows every step exactly -- its tree size and the tokens it emits -- but not how long it
would take. Time per step = verify(nodes) + draft, where

* ``verify(n)``: the target's verify latency with an n-node tree at batch 1, as a curve over
  node counts (piecewise linear between measured points, extended along the last segment).
  From ``--calibrate`` (timed here on the target, in process: ``calibrate_verify``), a cost file
  it saved (``--costs``), or given (``--verify-cost-ms 1=21,8=24,32=35``);
* ``draft``: the drafter's time per drafting step -- by default measured during the replay itself
  (the real drafter, the same calls as live), or given (``--draft-cost-ms 1.5`` or a curve by
  nodes).

Plain decoding emits one token per ``verify(1)``, so the expected speedup of one request at a
time is ``tokens x verify(1) / sum over steps of (verify(nodes) + draft)``. Neither includes
the services' RPC and gateway overheads (the same per step with or without speculation, so
they shrink the speedup towards 1), the prefill (the same for both) or batching.
"""
from __future__ import annotations

import json
import statistics
import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

COSTS_FORMAT = "specgrove-costs/1"


@dataclass(frozen=True)
class Curve:
    """Milliseconds by node count: piecewise linear through the points, flat below the first,
    extended along the last segment beyond the last (the verify cost keeps growing)."""

    points: tuple[tuple[int, float], ...]  # (nodes, ms), nodes strictly increasing

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a cost curve needs at least one point")
        xs = [x for x, _ in self.points]
        if xs != sorted(set(xs)) or xs[0] < 1 or any(ms < 0 for _, ms in self.points):
            raise ValueError(f"cost curve points need distinct node counts >= 1 and costs >= 0: {self.points}")

    @staticmethod
    def parse(text: str) -> "Curve":
        """``MS`` (the same for every size) or ``NODES=MS,NODES=MS,...``."""
        try:
            if "=" not in text:
                return Curve(((1, float(text)),))
            pairs = [p.split("=") for p in text.split(",") if p.strip()]
            return Curve(tuple(sorted((int(n), float(ms)) for n, ms in pairs)))
        except ValueError as exc:
            raise ValueError(f"bad cost curve {text!r}: expected MS or NODES=MS,... ({exc})") from None

    @staticmethod
    def of(mapping: dict) -> "Curve":
        return Curve(tuple(sorted((int(n), float(ms)) for n, ms in mapping.items())))

    def ms(self, nodes: int) -> float:
        pts = self.points
        xs = [x for x, _ in pts]
        if len(pts) == 1 or nodes <= xs[0]:
            return pts[0][1]
        i = min(max(bisect_left(xs, nodes), 1), len(pts) - 1)
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        return max(0.0, y0 + (y1 - y0) * (nodes - x0) / (x1 - x0))

    def to_json(self) -> dict:
        return {str(n): round(ms, 4) for n, ms in self.points}


@dataclass(frozen=True)
class CostModel:
    verify: Curve
    draft: Curve | None  # None: the drafter's time measured in the replay
    source: str  # where the verify curve came from, for the report

    def expected_speedup(self, steps: Sequence) -> float | None:
        """``steps``: ``replay_loop.Step``s of every request. None when nothing was stepped."""
        tokens = sum(s.emitted for s in steps)
        if not tokens:
            return None
        plain = tokens * self.verify.ms(1)
        spec = sum(self.verify.ms(s.nodes) + self.draft_ms(s) for s in steps)
        return plain / spec if spec > 0 else None

    def draft_ms(self, step) -> float:
        if not step.drafted:
            return 0.0  # no draft call: a root-only step (no room to draft)
        return self.draft.ms(step.nodes) if self.draft is not None else 1e3 * step.draft_s

    def to_json(self) -> dict:
        return {"verify_ms": self.verify.to_json(), "verify_source": self.source,
                "draft_ms": self.draft.to_json() if self.draft is not None else None,
                "draft_source": "given" if self.draft is not None else "measured in this replay (batch 1)"}


def load_costs(path: str | Path) -> tuple[Curve, str]:
    """A cost file written by ``--calibrate --save-costs``: the verify curve and its origin."""
    obj = json.loads(Path(path).read_text())
    if obj.get("format") != COSTS_FORMAT:
        raise ValueError(f"{path}: not a {COSTS_FORMAT} file")
    where = f"{path}: calibrated on {obj.get('model')} ({obj.get('dtype')}, {obj.get('device')}) " \
            f"at {obj.get('context_tokens')} tokens of context"
    return Curve.of(obj["verify_ms"]), where


def save_costs(path: str | Path, verify: Curve, meta: dict) -> None:
    Path(path).write_text(json.dumps({"format": COSTS_FORMAT, **meta, "verify_ms": verify.to_json()}, indent=1) + "\n")


def node_counts(largest: int) -> list[int]:
    """1, 2, 4, ... up to ``largest`` (included): the points calibration times."""
    out, n = [1], 2
    while n < largest:
        out.append(n)
        n *= 2
    if largest > 1:
        out.append(largest)
    return out


def calibrate_verify(engine, context: Sequence[int], sizes: Sequence[int], repeats: int = 7) -> Curve:
    """Time ``engine.verify`` (a ``target_service.engine.TargetEngine``, in process: no RPC)
    at batch 1 with chain trees of each size after ``context`` tokens: the median of
    ``repeats`` timed calls per size, after two warm-up rounds. Sizes take turns within each
    round, so machine drift hits them alike. Chains of tokens unlikely to be accepted keep the
    context nearly fixed; the cost depends on the node count, not the shape."""
    from specgrove.tree import TokenTree
    from specgrove.types import PrefillRequest, VerifyItem

    seqs = [1_000_000 + i for i in range(len(sizes))]
    firsts = engine.prefill([PrefillRequest(seq, tuple(context)) for seq in seqs])
    pending = [f.first_token for f in firsts]
    times: list[list[float]] = [[] for _ in sizes]
    vocab = engine.vocab_size
    try:
        for r in range(repeats + 2):
            for i, (seq, n) in enumerate(zip(seqs, sizes)):
                tree = TokenTree.chain([pending[i]] + [(pending[i] + 7 * (k + 1)) % vocab for k in range(n - 1)])
                started = time.perf_counter()
                (res,) = engine.verify([VerifyItem(seq, tree)])
                if r >= 2:
                    times[i].append(time.perf_counter() - started)
                pending[i] = res.bonus_token
    finally:
        for seq in seqs:
            engine.release(seq)
    return Curve(tuple((n, 1e3 * statistics.median(t)) for n, t in zip(sizes, times)))
