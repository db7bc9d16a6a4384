"""The propose phase of a step: which tree each running job verifies, and why.

Per job and step the :class:`Proposer` clamps the job's tree budget (remaining tokens, context,
the target's node limit), decides who drafts -- explicit per-request settings always, the
gateway's default speculation only when the load controller (``gateway.controller``) expects it
to beat plain decoding -- and asks the draft service for one tree per drafting job in one
batched ``Propose``. Every other job gets a root-only tree (plain decoding through the same
verify path) with a typed :class:`RootOnly` reason. If the draft service fails (every draft
replica), the batch decodes root-only for ``draft_retry_s`` and the jobs re-register their full
history with it afterwards (its state may be gone); a job whose one draft replica failed
decodes root-only for a step and re-registers on another replica.
"""
from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from gateway.controller import SeqRecord, SpeculationController
from gateway.job import Job
from gateway.shadow import ShadowTrack
from specgrove.errors import ServiceError
from specgrove.ports import DraftPort
from specgrove.tree import TokenTree
from specgrove.types import (DrafterInfo, DraftPrefill, ProposeRequest, TargetInfo, TreeBudget,
                             VerifyResult)

log = logging.getLogger("specgrove.gateway")


class RootOnly(enum.Enum):
    """Why a job verifies a root-only tree (plain decoding) in a step."""

    OFF = "off"  # the request turned speculation off
    NO_ROOM = "no room"  # its last token, or the end of the context: nothing to draft
    ADAPTIVE = "adaptive"  # the default speculation is skipped: plain decoding is faster now
    DRAFT_UNAVAILABLE = "draft unavailable"  # the draft service failed recently


@dataclass(frozen=True)
class StepDraft:
    """One job's tree for one step."""

    tree: TokenTree  # rooted at the job's pending token
    drafter: str = ""  # the drafter that drafted it ("" for a root-only tree)
    root_only: RootOnly | None = None

    @property
    def label(self) -> str:
        """The drafter name metrics and traces use: ``none`` for root-only trees."""
        return self.drafter or "none"


@dataclass(frozen=True)
class EffectiveSpeculation:
    """The speculation a request actually gets (echoed by REST, gRPC and ``generate``)."""

    drafter: str  # the drafter of its last drafting step, else the one it asked for; "none" = off
    budget: TreeBudget | None  # its tree budget; None when speculation is off

    def tree_json(self) -> dict | None:
        b = self.budget
        if b is None:
            return None
        if b.is_static:
            return {"branching": list(b.branching)}
        return {"nodes": b.max_nodes, "depth": b.max_depth, "top_k": b.top_k}


def effective_speculation(job: Job, default_drafter: str = "") -> EffectiveSpeculation:
    spec = job.spec
    if not spec.budget.speculates:
        return EffectiveSpeculation("none", None)
    return EffectiveSpeculation(job.stats.drafter or spec.drafter or default_drafter, spec.budget)


class Proposer:
    def __init__(self, draft: DraftPort, info: TargetInfo, adaptive: bool, draft_retry_s: float) -> None:
        self.draft, self.info = draft, info
        self.adaptive, self.draft_retry_s = adaptive, draft_retry_s
        self.controller = SpeculationController()
        self.draft_down_until = 0.0
        self.drafter_layers: dict[str, tuple[int, ...]] = {}  # feature drafters' target layers
        self.default_drafter = ""
        # Sequences a failed draft call may have left registered (a timeout on a live service):
        # released at the next contact, before any of them is prefilled again.
        self.unsure: set[int] = set()
        # Where scored shadow steps go (the gateway's metrics): (drafter, drafted, accepted).
        self.on_shadow_step: Callable[[str, int, int], None] = lambda drafter, drafted, accepted: None

    def use_drafters(self, infos: Sequence[DrafterInfo]) -> None:
        """What the draft service has loaded (refreshed by the gateway)."""
        self.drafter_layers = {d.name: d.feature_layers for d in infos}
        self.default_drafter = next((d.name for d in infos if d.is_default), self.default_drafter)

    def feature_layers(self, job: Job) -> tuple[int, ...]:
        """The target layers whose hidden states the job's drafter needs (EAGLE heads)."""
        if not job.spec.budget.speculates:
            return ()
        return self.drafter_layers.get(job.spec.drafter or self.default_drafter, ())

    async def propose(self, jobs: Sequence[Job]) -> list[StepDraft]:
        budgets = {j.seq_id: self.budget(j) for j in jobs}
        reasons = self._root_only_reasons(jobs, budgets)
        drafting = [j for j in jobs if reasons[j.seq_id] is None]
        shadows = self._shadow_calls(jobs)
        drafted: dict[int, StepDraft] = {}
        if drafting or shadows:
            drafted = await self._draft(drafting, budgets, shadows)
        return [drafted.get(j.seq_id) or self._root_only(j, reasons[j.seq_id]) for j in jobs]

    # --- shadow drafting (gateway.shadow) --------------------------------------------------------
    def score_shadows(self, jobs: Sequence[Job]) -> None:
        """After a step: score the shadow trees its tokens decide."""
        for job in jobs:
            for track in job.shadows:
                step = track.score(job.tokens, job.done)
                if step is not None:
                    self.on_shadow_step(track.drafter, *step)

    async def flush_shadows(self, jobs: Sequence[Job]) -> None:
        """Finished jobs: let their shadows catch up to the end of the output (a draft call per
        round, shadows only), so that their stats cover the whole request."""
        while True:
            calls = self._shadow_calls(jobs)
            if not calls:
                return
            await self._draft([], {}, calls)
            self.score_shadows(jobs)

    def _shadow_calls(self, jobs: Sequence[Job]) -> list[tuple[ShadowTrack, DraftPrefill | None, ProposeRequest]]:
        """The draft calls of every shadow whose next root is out. A clamped budget that cannot
        speculate is a root-only step, as a live one would be, scored at once without a call."""
        if time.monotonic() < self.draft_down_until:
            return []
        calls = []
        for job in jobs:
            for track in job.shadows:
                if track.drafter not in self.drafter_layers or self.drafter_layers[track.drafter]:
                    track.stopped = True  # unloaded, or a feature drafter (not shadowed)
                while track.wants_tree(len(job.tokens), job.done):
                    budget = self._shadow_budget(job, track)
                    if budget.speculates:
                        calls.append((track, *track.request(job.history, budget, job.spec.coupled,
                                                            job.spec.sampling)))
                        break
                    track.record(0, 0)
                    self.on_shadow_step(track.drafter, 0, 0)
        return calls

    def _shadow_budget(self, job: Job, track: ShadowTrack) -> TreeBudget:
        """The budget a live step at the shadow's root would have had."""
        return job.spec.shadow_budget.clamped(job.spec.max_tokens - track.root - 1,
                                              self.info.max_model_len - track.prompt_len - track.root,
                                              self.info.max_tree_nodes)

    @staticmethod
    def _root_only(job: Job, reason: RootOnly | None) -> StepDraft:
        # A step with no room to draft stays with the job's drafter, as a drafter that found
        # nothing would: per-drafter counters then add up to each request's steps.
        drafter = job.stats.drafter if reason is RootOnly.NO_ROOM else ""
        return StepDraft(TokenTree.root_only(job.tokens[-1]), drafter,
                         reason or RootOnly.DRAFT_UNAVAILABLE)

    def budget(self, job: Job) -> TreeBudget:
        """The job's budget clamped to its remaining tokens, the context and the node limit."""
        committed = len(job.history) - 1  # the last token is pending, not yet in the target's KV
        return job.spec.budget.clamped(job.spec.max_tokens - len(job.tokens),
                                       self.info.max_model_len - committed,
                                       self.info.max_tree_nodes)

    def observe(self, jobs: Sequence[Job], drafts: Sequence[StepDraft],
                results: Sequence[VerifyResult], verify_s: float) -> None:
        """Feed the controller: verify time by total nodes; accepted tokens per drafting job
        on the default speculation (a drafter that found nothing counts as 0, so gains are not
        overestimated)."""
        self.controller.observe_verify(sum(len(d.tree) for d in drafts), verify_s)
        for job, draft, res in zip(jobs, drafts, results):
            if job.spec.adaptive and draft.root_only is None:
                self.controller.observe_accepted(job.spec.drafter, len(res.accepted_tokens))
                job.adaptive_steps += 1
                job.adaptive_accepted += len(res.accepted_tokens)

    def _root_only_reasons(self, jobs: Sequence[Job],
                           budgets: dict[int, TreeBudget]) -> dict[int, RootOnly | None]:
        reasons: dict[int, RootOnly | None] = {}
        for j in jobs:
            if not j.spec.budget.speculates:
                reasons[j.seq_id] = RootOnly.OFF
            elif not budgets[j.seq_id].speculates:
                reasons[j.seq_id] = RootOnly.NO_ROOM
            elif time.monotonic() < self.draft_down_until:
                reasons[j.seq_id] = RootOnly.DRAFT_UNAVAILABLE
            else:
                reasons[j.seq_id] = None
        auto = [j for j in jobs if reasons[j.seq_id] is None and j.spec.adaptive]
        if auto and self.adaptive and not self._default_pays(jobs, budgets, reasons):
            for j in auto:
                reasons[j.seq_id] = RootOnly.ADAPTIVE
        return reasons

    def _default_pays(self, jobs, budgets, reasons) -> bool:
        """Would the batch's default speculation beat plain decoding this step?"""
        nodes = sum(budgets[j.seq_id].node_bound if reasons[j.seq_id] is None else 1 for j in jobs)
        seqs = [SeqRecord(j.spec.drafter, j.adaptive_accepted, j.adaptive_steps) for j in jobs
                if reasons[j.seq_id] is None and j.spec.adaptive]
        return self.controller.should_speculate(len(jobs), nodes, seqs)

    async def _draft(self, jobs: Sequence[Job], budgets: dict[int, TreeBudget],
                     shadows: Sequence[tuple[ShadowTrack, DraftPrefill | None, ProposeRequest]] = ()
                     ) -> dict[int, StepDraft]:
        """One ``Propose`` for the drafting jobs and the shadows' trees (registrations first)."""
        started = time.monotonic()
        # A steady-state step drafts from at most one step's commits. After root-only steps the
        # drafter first catches up over every token since (a feature drafter runs its layer
        # over each): a one-off cost that is not what another speculative step would cost.
        steady = all(len(j.new_tokens) <= j.spec.budget.depth + 1 for j in jobs)
        try:
            if self.unsure:
                await self.draft.release(sorted(self.unsure))
                self.unsure.clear()
            unsynced = [j for j in jobs if not j.draft_synced]
            registrations = [p for _, p, _ in shadows if p is not None]
            if unsynced or registrations:  # new jobs, or all of them after the draft service came back
                await self.draft.prefill([DraftPrefill(j.seq_id, tuple(j.history), j.spec.sampling,
                                                       j.take_features()) for j in unsynced] + registrations)
                for j in unsynced:
                    j.draft_synced, j.new_tokens = True, ()
            props = await self.draft.propose([
                ProposeRequest(j.seq_id, j.new_tokens, budgets[j.seq_id], j.spec.drafter,
                               j.spec.coupled, j.take_features()) for j in jobs] + [r for _, _, r in shadows])
        except ServiceError as exc:
            log.warning("draft service failed (%s): decoding without speculation for %.0fs",
                        exc, self.draft_retry_s)
            self.draft_down_until = time.monotonic() + self.draft_retry_s
            for j in jobs:
                j.draft_synced = False
            self.unsure.update(j.seq_id for j in jobs)
            for track, _, req in shadows:  # its draft state is unknown now: the shadow ends
                track.stopped = True
                self.unsure.add(req.seq_id)
            return {}
        if jobs and steady and not unsynced:  # nor is a first draft (prefill, the prompt)
            self.controller.observe_draft(len(jobs), time.monotonic() - started)
        trees = {p.seq_id: p for p in props}
        for j in jobs:
            j.new_tokens = ()
            if j.seq_id not in trees:  # its draft replica failed (gateway.draft_pool): root-only
                j.draft_synced = False  # now, registered again with its history on another one
        for track, _, req in shadows:
            prop = trees.pop(req.seq_id, None)
            if prop is None:  # its draft state went with a failed replica: the shadow ends
                track.stopped = True
            else:
                track.take_tree(prop.tree)
        return {seq_id: StepDraft(p.tree, p.drafter) for seq_id, p in trees.items()}
