"""Runs a model over its own paged KV cache: the piece the target engine and model drafters share.

Two halves, split so that tensor-parallel ranks share the second:

* :class:`ModelRunner` owns the block manager and *prepares* each forward on the host: per
  sequence, new tokens with their RoPE positions, written right after the sequence's committed
  tokens (plus any tree tokens already written this step). Causal items are prompt chunks or
  catch-up tokens; tree items carry their ancestor-mask rows. Metadata is built once per
  forward and shared by every layer (nano-vllm / vLLM v1 style). An item may also carry input
  features (feature-conditioned drafters, EAGLE) and ask for the hidden states of its tokens
  at some layers (the target's features for such drafters).
* :class:`ModelExecutor` holds the model and the KV tensors and *executes* a prepared batch,
  or applies a commit plan's slot copies. A tensor-parallel worker runs only an executor: rank
  0 prepares and broadcasts, every rank executes on its own shard.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from specgrove.kv import BlockManager, KVCacheConfig
from specgrove.modeling.attention import AttentionMetadata


@dataclass(frozen=True)
class ForwardItem:
    seq_id: int
    token_ids: Sequence[int]
    positions: Sequence[int]
    # Tree tokens this sequence already wrote in this step (the window starts at committed).
    tree_offset: int = 0
    # [n][tree_offset + n] visibility of the window; None = causal after the committed prefix.
    tree_mask: Sequence[Sequence[bool]] | None = None
    all_logits: bool = False  # logits for every token, else only the last
    features: torch.Tensor | None = None  # [n, d] model inputs beside the tokens (EAGLE heads)
    capture: bool = False  # return every token's hidden states at the batch's capture layers


@dataclass
class FeatureCapture:
    """Hidden states to keep during a forward: after decoder layers ``layers``, rows ``rows``."""

    layers: tuple[int, ...]
    rows: torch.Tensor  # [F] int64 token rows of the batch
    taken: list[torch.Tensor] = field(default_factory=list)  # one [F, d] per layer, in order

    def stacked(self) -> torch.Tensor:  # [F, len(layers) * d]
        return torch.cat(self.taken, dim=-1)


@dataclass(frozen=True)
class PreparedBatch:
    """Device tensors of one forward, everything a rank needs to run it."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64 RoPE positions
    meta: AttentionMetadata
    logit_rows: torch.Tensor  # [R] int64 rows of the hidden states that get logits
    bounds: tuple[int, ...]  # item i owns logits rows bounds[i]:bounds[i+1]
    features: torch.Tensor | None = None  # [T, d] input features (rank-local; never broadcast)
    capture_layers: tuple[int, ...] = ()  # decoder layers whose outputs are captured
    capture_rows: torch.Tensor | None = None  # [F] int64
    capture_bounds: tuple[int, ...] = ()  # item i owns captured rows capture_bounds[i]:[i+1]
    hidden_out: bool = False  # return the logit rows' final hidden states instead of logits


@dataclass(frozen=True)
class ForwardOutput:
    logits: list[torch.Tensor]  # per item [n or 1, V]; final hidden states [n or 1, d] if asked
    features: list[torch.Tensor | None]  # per item [n, len(layers) * d] when it asked, else None


class ModelExecutor:
    """A model (or one rank's shard of it) and its KV tensors; runs prepared batches."""

    def __init__(self, model: torch.nn.Module, kv: KVCacheConfig, device: torch.device) -> None:
        cfg = model.config
        self.model = model
        self.device = device
        self.dtype = model.lm_head.weight.dtype
        self.kv_cache = torch.zeros(  # [layers, 2, blocks, block_size, Hkv_local, D]
            cfg.num_layers, 2, kv.num_blocks, kv.block_size, model.kv_heads_per_rank,
            cfg.head_dim, dtype=self.dtype, device=device,
        )
        self._backend = model.model.layers[0].self_attn.backend

    @property
    def config(self):
        return self.model.config

    def execute(self, batch: PreparedBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the model on a prepared batch: logits of the selected rows ([R, V], or their
        final hidden states [R, d] when ``hidden_out``), and the captured hidden states
        ([F, layers * d]) when the batch asks for any."""
        capture = None
        if batch.capture_layers:
            capture = FeatureCapture(batch.capture_layers, batch.capture_rows)
        extra = {} if batch.features is None else {"features": batch.features}
        hidden = self.model(batch.input_ids, batch.positions, self.kv_cache, batch.meta,
                            capture=capture, **extra)
        rows = hidden[batch.logit_rows]
        out = rows if batch.hidden_out else self.model.logits(rows)
        return out, None if capture is None else capture.stacked()

    def apply_copies(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy K/V slots in every layer (a commit plan); src, dst: [C] int64."""
        self._backend.commit_kv(self.kv_cache, src, dst)

    def close(self) -> None:
        """Release what the executor holds beyond memory (tensor-parallel ranks); no-op here."""


class ModelRunner:
    """Block manager + host-side preparation over an executor (local or tensor-parallel)."""

    def __init__(self, executor: ModelExecutor, kv: KVCacheConfig) -> None:
        self.executor = executor
        self.blocks = BlockManager.of(kv)
        self.device = executor.device

    @property
    def config(self):
        return self.executor.config

    @property
    def model(self) -> torch.nn.Module:
        return self.executor.model

    def forward(self, items: Sequence[ForwardItem]) -> list[torch.Tensor]:
        """Reserve slots, run one batched forward, return logits per item ([n or 1, V])."""
        return self.run(items).logits

    @torch.inference_mode()
    def run(self, items: Sequence[ForwardItem], capture_layers: Sequence[int] = (),
            hidden_out: bool = False) -> ForwardOutput:
        """``forward`` that can also capture hidden states at ``capture_layers`` for the items
        that ask (``ForwardItem.capture``) and return final hidden states instead of logits."""
        for item in items:
            self.blocks.reserve(item.seq_id, item.tree_offset + len(item.token_ids))
        batch = self._prepare(items, tuple(capture_layers), hidden_out)
        out, captured = self.executor.execute(batch)
        b, c = batch.bounds, batch.capture_bounds
        features: list[torch.Tensor | None] = [None] * len(items)
        if captured is not None:
            features = [captured[c[i]:c[i + 1]] if it.capture else None for i, it in enumerate(items)]
        return ForwardOutput([out[b[i]:b[i + 1]] for i in range(len(items))], features)

    def close(self) -> None:
        self.executor.close()

    def commit_many(self, commits: Sequence[tuple[int, int, Sequence[int] | None]]) -> None:
        """Commit several sequences and apply all their path copies in one kernel call."""
        src: list[int] = []
        dst: list[int] = []
        for seq_id, n, path in commits:
            plan = self.blocks.commit(seq_id, n, list(path) if path is not None else None)
            src += plan.src_slots
            dst += plan.dst_slots
        self._copy_slots(src, dst)

    def copy_prefixes(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Give each ``(source, twin)`` pair's twin (a sequence with no tokens yet) a copy of
        the source's committed KV, committed, in one kernel call: a prefill of an equal prompt
        without its forward."""
        src: list[int] = []
        dst: list[int] = []
        for source, twin in pairs:
            n = self.blocks.committed_len(source)
            self.blocks.reserve(twin, n)
            src += self.blocks.slots(source, 0, n)
            dst += self.blocks.slots(twin, 0, n)
            self.blocks.commit(twin, n)
        self._copy_slots(src, dst)

    def _copy_slots(self, src: list[int], dst: list[int]) -> None:
        """Copy K/V from slots ``src`` to ``dst`` in every layer, one kernel call."""
        if src:
            as_tensor = lambda x: torch.tensor(x, dtype=torch.int64, device=self.device)
            self.executor.apply_copies(as_tensor(src), as_tensor(dst))

    def _prepare(self, items: Sequence[ForwardItem], capture_layers: tuple[int, ...] = (),
                 hidden_out: bool = False) -> PreparedBatch:
        dev = self.device
        rows, bounds, start = [], [0], 0
        captured, capture_bounds = [], [0]
        for it in items:
            n = len(it.token_ids)
            rows.extend(range(start, start + n) if it.all_logits else [start + n - 1])
            bounds.append(len(rows))
            if it.capture:
                captured.extend(range(start, start + n))
            capture_bounds.append(len(captured))
            start += n
        capture = bool(capture_layers and captured)
        features = None
        if any(it.features is not None for it in items):
            features = torch.cat([it.features for it in items]).to(dev)  # every item must have them
        return PreparedBatch(
            input_ids=torch.tensor([t for it in items for t in it.token_ids], device=dev),
            positions=torch.tensor([p for it in items for p in it.positions], device=dev),
            meta=self._metadata(items),
            logit_rows=torch.tensor(rows, device=dev),
            bounds=tuple(bounds),
            features=features,
            capture_layers=capture_layers if capture else (),
            capture_rows=torch.tensor(captured, device=dev) if capture else None,
            capture_bounds=tuple(capture_bounds),
            hidden_out=hidden_out,
        )

    def _metadata(self, items: Sequence[ForwardItem]) -> AttentionMetadata:
        bm = self.blocks
        slots: list[int] = []
        kv_lens, q_lens, windows = [], [], []
        for it in items:
            base = bm.committed_len(it.seq_id) + it.tree_offset
            n = len(it.token_ids)
            slots += bm.slots(it.seq_id, base, base + n)
            kv_lens.append(base + n)
            q_lens.append(n)
            windows.append(it.tree_offset + n)
        tables = [bm.block_table(it.seq_id) for it in items]
        width = max(len(t) for t in tables)
        table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        cu = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        mask, tree_lens = self._tree_mask(items, windows)
        dev = self.device
        return AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=table.to(dev),
            kv_lens=torch.tensor(kv_lens, dtype=torch.int32, device=dev),
            cu_seqlens_q=cu.to(dev),
            tree_mask=None if mask is None else mask.to(dev),
            tree_lens=None if tree_lens is None else tree_lens.to(dev),
        )

    @staticmethod
    def _tree_mask(items: Sequence[ForwardItem], windows: list[int]):
        """[T, W] mask rows; causal items inside a tree batch get a lower-triangular window."""
        if all(it.tree_mask is None for it in items):
            return None, None
        width = max(windows)
        rows: list[torch.Tensor] = []
        for it, w in zip(items, windows):
            n = len(it.token_ids)
            if it.tree_mask is None:
                if it.tree_offset:
                    raise ValueError("a causal item cannot follow tree tokens in the same step")
                block = torch.ones(n, n, dtype=torch.bool).tril()
            else:
                block = torch.tensor(it.tree_mask, dtype=torch.bool).reshape(n, w)
            rows.append(torch.nn.functional.pad(block, (0, width - w)))
        return torch.cat(rows), torch.tensor(windows, dtype=torch.int32)


def load_executor(run, tp=None, device: torch.device | None = None) -> ModelExecutor:
    """Build the model of ``run`` (a :class:`specgrove.config.ModelRunConfig`) with its kernels
    and KV tensors: the whole model, or with ``tp`` (a ``TPGroup``) this rank's shard only.
    The one way every runner -- target, draft model, tensor-parallel rank -- is built."""
    from specgrove.kernels.backend import select_backend
    from specgrove.modeling.loader import build_model, resolve_model

    device = device or run.torch_device
    model = build_model(resolve_model(run.model), run.torch_dtype, device,
                        select_backend(run.kernel_backend, device), tp=tp,
                        transposed=run.transposed, quantization=run.quantization)
    return ModelExecutor(model, run.kv, device)


def load_runner(run) -> ModelRunner:
    """A single-process runner for ``run`` (a :class:`specgrove.config.ModelRunConfig`)."""
    return ModelRunner(load_executor(run), run.kv)
