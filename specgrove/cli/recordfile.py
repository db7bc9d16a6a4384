"""Record files: what ``specgrove record`` stores per request and ``specgrove replay`` reads.

One JSON object per line (``FORMAT``): the prompt's token ids, the sampling settings with the
seed the gateway actually used, the emitted token ids, the finish reason, the limits the step
loop clamped trees with (``max_tokens``, ``max_model_len``), and the live speculation stats for
comparison (``LiveStats``).

Why this is enough for an exact replay: with greedy decoding or the seeded position-keyed
Gumbel-max sampling (``specgrove.sampling``), the target's token at every tree node is a pure
function of the prefix and the position, so the emitted continuation is a fixed function of
(prompt, seed), whatever drafter or tree produced it. Any other drafter's acceptance can then
be computed from the continuation alone (``specgrove.cli.replay_loop``).

Torch-free and service-free: it only knows the wire dataclasses of ``specgrove.types``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from specgrove.sampling_params import Grammar, SamplingParams
from specgrove.types import TreeBudget

FORMAT = "specgrove-record/1"


@dataclass(frozen=True)
class LiveStats:
    """How the request went live, as the gateway reported it (for comparison only)."""

    drafter: str  # the effective drafter; "none" when speculation was off
    tree: dict | None  # the effective tree ({"branching": [...]} or {"nodes", "depth", "top_k"})
    adaptive: bool  # on the gateway's default speculation: the load controller may have skipped steps
    coupled: bool  # coupled drafting (model drafts ranked by the request's noise)
    steps: int
    drafted_tokens: int
    accepted_tokens: int
    mean_acceptance_length: float
    # Accepted draft tokens per verify step, read off the stream (one message per step). None
    # when the stream did not map one-to-one onto steps (a preemption re-prefills a request,
    # which streams a message that is no step).
    step_accepted: tuple[int, ...] | None
    max_batch_size: int = 0
    seconds: float = 0.0  # the request's wall time seen by the client


@dataclass(frozen=True)
class Record:
    id: str
    category: str
    model: str  # the name the gateway served the target under
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]  # every emitted token, the prefill's first token first
    finish_reason: str  # "stop" | "length"
    max_tokens: int  # the request's limit: the step loop never drafts past it
    max_model_len: int  # the target's context: the step loop never drafts past it either
    sampling: SamplingParams  # with the seed actually used
    ignore_eos: bool = False
    live: LiveStats | None = None

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError(f"record {self.id!r}: no prompt tokens")
        if not self.output_ids:
            raise ValueError(f"record {self.id!r}: no output tokens")
        if len(self.output_ids) > self.max_tokens:
            raise ValueError(f"record {self.id!r}: {len(self.output_ids)} output tokens exceed "
                             f"max_tokens {self.max_tokens}")
        if not self.sampling.greedy and self.sampling.seed is None:
            raise ValueError(f"record {self.id!r}: a sampled request needs its seed to be replayed")

    def to_json(self) -> dict:
        sampling = asdict(self.sampling)
        sampling.pop("logprobs")  # how the response was shown, not what was sampled
        sampling["logit_bias"] = [list(p) for p in self.sampling.logit_bias]
        sampling["stop_token_ids"] = list(self.sampling.stop_token_ids)
        live = None
        if self.live is not None:
            live = asdict(self.live)
            live["step_accepted"] = list(self.live.step_accepted) if self.live.step_accepted is not None else None
        return {"format": FORMAT, "id": self.id, "category": self.category, "model": self.model,
                "prompt_ids": list(self.prompt_ids), "output_ids": list(self.output_ids),
                "finish_reason": self.finish_reason, "max_tokens": self.max_tokens,
                "max_model_len": self.max_model_len, "ignore_eos": self.ignore_eos,
                "sampling": sampling, "live": live}

    @staticmethod
    def from_json(obj: dict) -> "Record":
        if obj.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} record (format {obj.get('format')!r})")
        s = dict(obj["sampling"])
        known = {f.name for f in fields(SamplingParams)}
        unknown = sorted(set(s) - known)
        if unknown:  # a field this version cannot honour would make the replay silently wrong
            raise ValueError(f"record {obj.get('id')!r}: unknown sampling fields {unknown}")
        s["logit_bias"] = tuple((int(t), float(b)) for t, b in s.get("logit_bias", ()))
        s["stop_token_ids"] = tuple(s.get("stop_token_ids", ()))
        if s.get("grammar") is not None:  # asdict's {"kind", "spec", "choices"}
            g = s["grammar"]
            s["grammar"] = Grammar(g["kind"], g.get("spec", ""), tuple(g.get("choices", ())))
        live = obj.get("live")
        if live is not None:
            acc = live.get("step_accepted")
            live = LiveStats(**{**live, "step_accepted": tuple(acc) if acc is not None else None})
        return Record(str(obj["id"]), str(obj.get("category", "all")), str(obj["model"]),
                      tuple(obj["prompt_ids"]), tuple(obj["output_ids"]), str(obj["finish_reason"]),
                      int(obj["max_tokens"]), int(obj["max_model_len"]), SamplingParams(**s),
                      bool(obj.get("ignore_eos", False)), live)


def write_record(f, record: Record) -> None:
    """Append one record to an open text file (one line, flushed: a crash keeps what was done)."""
    f.write(json.dumps(record.to_json()) + "\n")
    f.flush()


def read_records(path: str | Path) -> list[Record]:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Record.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: {exc}") from None
    if not out:
        raise ValueError(f"{path}: no records")
    return out


def budget_of(tree: dict | None) -> TreeBudget | None:
    """The ``TreeBudget`` of an effective-tree object (``EffectiveSpeculation.tree_json``)."""
    if not tree:
        return None
    if tree.get("branching"):
        return TreeBudget(branching=tuple(tree["branching"]))
    return TreeBudget(max_nodes=tree["nodes"], max_depth=tree["depth"], top_k=tree.get("top_k", 4))


def tree_text(budget: TreeBudget) -> str:
    """A budget in the one tree syntax of every entry point: ``4,2,2,1`` or ``N:D:K``."""
    if budget.is_static:
        return ",".join(map(str, budget.branching))
    return f"{budget.max_nodes}:{budget.max_depth}:{budget.top_k}"


def tree_json(budget: TreeBudget) -> dict:
    if budget.is_static:
        return {"branching": list(budget.branching)}
    return {"nodes": budget.max_nodes, "depth": budget.max_depth, "top_k": budget.top_k}
