"""``specgrove replay``: evaluate a drafter exactly against recorded traffic, in this process,
without decoding with the target.

Builds the drafter as the draft service would (``draft_service.factory.build_drafter``) behind
the draft service's own ``DraftEngine``, replays every record through it
(``specgrove.cli.replay_loop``: the accepted path of each proposed tree is read off the
recorded continuation), and reports tau, acceptance by position and an expected speedup
(``replay_costs``). The target model is loaded only when needed: for the features of a
feature drafter (one prefill per recorded sequence, far cheaper than decoding it) and for
``--calibrate`` (timing verify by tree size).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from specgrove.cli.recordfile import Record, budget_of, read_records, tree_text
from specgrove.cli.replay_costs import CostModel, Curve, calibrate_verify, load_costs, node_counts, save_costs
from specgrove.config import ModelRunConfig, parse_tree_option
from specgrove.kv import KVCacheConfig
from specgrove.types import TreeBudget

DEFAULT_TREE = "8:4"  # the gateway's default speculation


@dataclass(frozen=True)
class ReplayOptions:
    records: str
    drafter: str
    tree: str | None
    target: str | None
    dtype: str
    quantization: str
    device: str
    kernel_backend: str
    block_size: int
    kv_blocks: int
    max_tree_nodes: int
    coupled: bool | None
    costs: str | None
    verify_cost_ms: str | None
    draft_cost_ms: str | None
    calibrate: bool
    save_costs: str | None
    limit: int | None
    per_request: bool
    as_json: bool


def run_replay(opts: ReplayOptions) -> dict:
    from draft_service.engine import DraftEngine
    from draft_service.factory import DraftTarget, build_drafter
    from specgrove.config import parse_drafter_option
    from specgrove.cli import replay_report
    from specgrove.cli.replay_loop import Replayer

    sources = [n for n, v in (("--calibrate", opts.calibrate), ("--costs", opts.costs),
                              ("--verify-cost-ms", opts.verify_cost_ms)) if v]
    if len(sources) > 1:
        raise ValueError(f"give one of --calibrate, --costs and --verify-cost-ms, not {' and '.join(sources)}")
    records = read_records(opts.records)
    records = records[:opts.limit] if opts.limit else records
    target = opts.target or _one_model(records)
    name, spec = parse_drafter_option(opts.drafter)
    if spec == "eagle":
        spec = f"eagle:{target}"  # the head shipped for the target
    load_started = time.perf_counter()
    run = _run_config("", opts, max(len(r.prompt_ids) + len(r.output_ids) for r in records))
    drafter = build_drafter(spec, DraftTarget(target), run)
    engine = DraftEngine.of({name: drafter}, name)
    target_engine = None
    if drafter.feature_layers or opts.calibrate:
        target_engine = _target_engine(target, opts, records)
    features = target_features(target_engine, drafter.feature_layers) if drafter.feature_layers else None
    load_s = time.perf_counter() - load_started

    replayer = Replayer(engine, name, opts.max_tree_nodes, features)
    started = time.perf_counter()
    results = [replayer.replay(r, _budget(r, opts.tree), _coupled(r, opts.coupled)) for r in records]
    replay_s = time.perf_counter() - started

    costs = _costs(opts, target, target_engine, records, max(s.nodes for r in results for s in r.steps))
    meta = {"drafter": f"{name}={spec}", "tree": tree_text(parse_tree_option(opts.tree)) if opts.tree else _trees(records), "target": target,
            "replay_seconds": replay_s, "load_seconds": load_s}
    return replay_report.summarize(results, costs, meta, opts.per_request)


def _one_model(records: list[Record]) -> str:
    models = sorted({r.model for r in records})
    if len(models) > 1:
        raise ValueError(f"the records come from several models ({', '.join(models)}): give --target")
    return models[0]


def _budget(record: Record, tree: str | None) -> TreeBudget:
    """``--tree``, else the tree the request used live, else the gateway's default."""
    if tree is not None:
        return parse_tree_option(tree)
    live = budget_of(record.live.tree) if record.live is not None else None
    return live if live is not None and live.speculates else parse_tree_option(DEFAULT_TREE)


def _trees(records: list[Record]) -> str:
    shapes = sorted({tree_text(_budget(r, None)) for r in records})
    return shapes[0] if len(shapes) == 1 else "per record: " + " ".join(shapes)


def _coupled(record: Record, coupled: bool | None) -> bool:
    if coupled is not None:
        return coupled
    return record.live.coupled if record.live is not None else True


def _run_config(model: str, opts: ReplayOptions, longest: int) -> ModelRunConfig:
    # One sequence at a time: the KV cache needs to hold the longest record (plus a tree).
    blocks = max(opts.kv_blocks, -(-(longest + opts.max_tree_nodes) // opts.block_size) + 1)
    return ModelRunConfig(model, opts.dtype, opts.device, opts.kernel_backend,
                          KVCacheConfig(opts.block_size, blocks), quantization=opts.quantization)


def _target_engine(target: str, opts: ReplayOptions, records: list[Record]):
    from specgrove.modeling.loader import resolve_model
    from specgrove.runner import load_runner
    from target_service.engine import TargetEngine

    longest = max(len(r.prompt_ids) + len(r.output_ids) for r in records)
    return TargetEngine(load_runner(_run_config(str(resolve_model(target)), opts, longest)))


def target_features(engine, layers: tuple[int, ...]):
    """The target's features of a recorded sequence: one prefill of prompt + output (the last
    token never needs one), row j the hidden state that predicted token j + 1 -- the rows the
    live target returned piecemeal at prefill and after each verify. ``engine``: a
    ``target_service.engine.TargetEngine``."""
    from specgrove.types import PrefillRequest

    def features(record: Record):
        seq = 2_000_000
        tokens = record.prompt_ids + record.output_ids[:-1]
        (res,) = engine.prefill([PrefillRequest(seq, tokens, feature_layers=layers)])
        engine.release(seq)
        return res.features

    return features


def _costs(opts: ReplayOptions, target: str, engine, records: list[Record], largest: int) -> CostModel | None:
    draft = Curve.parse(opts.draft_cost_ms) if opts.draft_cost_ms else None
    if opts.verify_cost_ms:
        return CostModel(Curve.parse(opts.verify_cost_ms), draft, "--verify-cost-ms")
    if opts.costs:
        verify, where = load_costs(opts.costs)
        return CostModel(verify, draft, where)
    if not opts.calibrate:
        return None
    # A typical step's context: the prompt plus half the output, on average.
    context_len = max(1, int(statistics.mean(len(r.prompt_ids) + len(r.output_ids) // 2 for r in records)))
    sample = list(records[0].prompt_ids + records[0].output_ids)
    context = (sample * (context_len // len(sample) + 1))[:context_len]
    verify = calibrate_verify(engine, context, node_counts(max(largest, 2)))
    dtype = str(next(engine.runner.model.parameters()).dtype).removeprefix("torch.")
    meta = {"model": target, "dtype": dtype, "device": str(engine.runner.device), "context_tokens": len(context)}
    if opts.save_costs:
        save_costs(opts.save_costs, verify, meta)
    return CostModel(verify, draft, f"calibrated here on {target} ({dtype}, {meta['device']}) "
                                    f"at {len(context)} tokens of context")
