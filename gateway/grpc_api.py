"""The gateway's gRPC API: ``Generate`` streams deltas; admin calls pass through to the draft
service. Errors before the first message are statuses (INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
UNAVAILABLE); an error after streaming began ends the stream with an in-band ``error``."""
from __future__ import annotations

import uuid
from dataclasses import replace

import grpc
from pydantic import ValidationError

from gateway.api_schema import (
    ChatMessage, ChatRequest, CompletionRequest, SpeculationSpec, TreeSpec, invalid, job_spec,
    prompts_of,
)
from gateway.job import Failed, Finished, Job
from gateway.orchestrator import Overloaded
from gateway.speculation import effective_speculation
from gateway.state import GatewayState
from specgrove.errors import ServiceError
from specgrove.pb.v1 import draft_pb2, gateway_pb2, gateway_pb2_grpc
from specgrove.errors import InvalidRequest
from specgrove.types import TreeBudget

_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
           503: grpc.StatusCode.UNAVAILABLE}


def _as_request(msg: gateway_pb2.GenerateRequest):
    """Map the proto onto the REST schema so both APIs share one validation path."""
    s = msg.sampling
    common = dict(model=msg.model, max_tokens=msg.max_tokens or None,
                  # Unset fields take the REST defaults: one set of defaults for both APIs.
                  temperature=s.temperature if s.HasField("temperature") else 1.0,
                  top_p=s.top_p if s.HasField("top_p") else 1.0, top_k=s.top_k,
                  seed=s.seed if s.HasField("seed") else None, stop=list(msg.stop),
                  presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
                  repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
                  min_p=s.min_p, min_tokens=s.min_tokens,
                  logit_bias={str(k): v for k, v in s.logit_bias.items()} or None,
                  stop_token_ids=list(s.stop_token_ids), ignore_eos=msg.ignore_eos)
    kind = s.grammar.WhichOneof("kind")
    if kind is not None:  # as vLLM's structured_outputs: one path of checks with REST
        value = list(s.grammar.choice.options) if kind == "choice" else getattr(s.grammar, kind)
        common["structured_outputs"] = {{"json_schema": "json"}.get(kind, kind): value}
    wants_logprobs = s.HasField("logprobs")
    if msg.HasField("speculation"):
        sp = msg.speculation
        tree = None
        if sp.tree_spec and sp.HasField("tree"):
            raise InvalidRequest("speculation.tree_spec", "give tree_spec or tree, not both")
        if sp.tree_spec:
            tree = sp.tree_spec
        elif sp.HasField("tree"):
            t = TreeBudget.from_pb(sp.tree)
            tree = (",".join(map(str, t.branching)) if t.is_static
                    else TreeSpec(nodes=t.max_nodes, depth=t.max_depth, top_k=t.top_k))
        coupled = sp.coupled if sp.HasField("coupled") else True
        common["speculation"] = SpeculationSpec(drafter="none" if sp.off else (sp.drafter or None),
                                                tree=tree, coupled=coupled, shadow=list(sp.shadow))
    if msg.WhichOneof("input") == "messages":
        return ChatRequest(messages=[ChatMessage(role=m.role, content=m.content)
                                     for m in msg.messages.messages],
                           special_tokens_in_content=msg.messages.special_tokens_in_content,
                           logprobs=wants_logprobs, top_logprobs=s.logprobs if wants_logprobs else None,
                           **common)
    return CompletionRequest(prompt=msg.prompt, logprobs=s.logprobs if wants_logprobs else None, **common)


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, state: GatewayState) -> None:
        self.state = state

    def _submit(self, msg: gateway_pb2.GenerateRequest) -> Job:
        st = self.state
        try:
            req = _as_request(msg)
        except ValidationError as exc:
            raise invalid(exc) from exc
        if req.model:
            st.check_model(req.model)
        ids = prompts_of(req, st.codec, st.info.vocab_size)[0]
        chat = isinstance(req, ChatRequest)
        default_max = None if chat else st.cfg.default_max_tokens
        spec = job_spec(req, ids, st.info, st.cfg.default_budget, st.drafters, default_max)
        # The request's span (tracing on) is a child of this call's gRPC server span, which the
        # interceptor parented on the caller's trace context from the metadata.
        return st.submit(replace(spec, request_id=msg.request_id or "gen-" + uuid.uuid4().hex[:24],
                                 operation="chat" if chat else "text_completion"))

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        await self.state.admit()
        if request.HasField("speculation"):
            for name in (request.speculation.drafter, *request.speculation.shadow):
                await self.state.know_drafter(name)
        try:
            job = self._submit(request)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        rid = request.request_id
        try:
            first = True
            while True:
                ev = await job.events.get()
                if isinstance(ev, Failed):
                    if first:
                        await context.abort(_STATUS.get(ev.status, grpc.StatusCode.INTERNAL), ev.message)
                    yield gateway_pb2.GenerateResponse(request_id=rid, error=ev.message)
                    return
                if isinstance(ev, Finished):
                    if job.spec.shadow:
                        await job.shadows_scored.wait()  # scored to the end right after the last step
                    yield self._last(job, rid, ev.reason)
                    return
                msg = gateway_pb2.GenerateResponse(request_id=rid, text=ev.text, token_ids=ev.token_ids,
                                                   accepted_tokens=ev.accepted,
                                                   logprobs=[lp.to_pb() for lp in ev.logprobs])
                if first:
                    msg.effective.CopyFrom(self._effective(job))
                    first = False
                yield msg
        finally:
            job.cancel()  # the client cancelled or went away: leave the batch at the next step

    def _last(self, job: Job, rid: str, reason: str) -> gateway_pb2.GenerateResponse:
        st = job.stats
        n_in, n_out = len(job.spec.prompt_ids), len(job.tokens)
        return gateway_pb2.GenerateResponse(
            request_id=rid, finish_reason=reason,
            usage=gateway_pb2.Usage(prompt_tokens=n_in, completion_tokens=n_out, total_tokens=n_in + n_out),
            speculation=gateway_pb2.SpeculationStats(
                steps=st.steps, drafted_tokens=st.drafted_tokens, accepted_tokens=st.accepted_tokens,
                mean_acceptance_length=st.mean_acceptance_length, max_batch_size=st.max_batch_size),
            effective=self._effective(job), seed=job.spec.sampling.seed,
            shadow={t.drafter: gateway_pb2.SpeculationStats(
                steps=t.stats.steps, drafted_tokens=t.stats.drafted_tokens, accepted_tokens=t.stats.accepted_tokens,
                mean_acceptance_length=t.stats.mean_acceptance_length)
                for t in job.shadows if t.drafter in job.spec.shadow})

    def _effective(self, job: Job) -> gateway_pb2.EffectiveSpeculation:
        eff = effective_speculation(job, self.state.default_drafter)
        return gateway_pb2.EffectiveSpeculation(
            drafter=eff.drafter, tree=eff.budget.to_pb() if eff.budget is not None else None)

    async def ListModels(self, request, context):
        st = self.state
        return gateway_pb2.ListModelsResponse(models=[gateway_pb2.ModelCard(
            id=name, max_model_len=st.info.max_model_len, owned_by="specgrove") for name in st.model_names])

    async def ListDrafters(self, request, context):
        infos = await self._admin(context, self.state.draft.list_drafters())
        return draft_pb2.ListDraftersResponse(drafters=[i.to_pb() for i in infos])

    async def LoadDrafter(self, request, context):
        info = await self._admin(context, self.state.draft.load_drafter(
            request.name, request.spec, request.make_default))
        await self.state.refresh_drafters()
        return info.to_pb()

    async def UnloadDrafter(self, request, context):
        await self._admin(context, self.state.draft.unload_drafter(request.name))
        await self.state.refresh_drafters()
        return draft_pb2.UnloadDrafterResponse()

    async def ClearDrafter(self, request, context):
        info = await self._admin(context, self.state.draft.clear_drafter(request.name))
        await self.state.refresh_drafters()
        return info.to_pb()

    async def _admin(self, context, call):
        """A drafter admin call through the draft port; its error becomes this call's status."""
        try:
            return await call
        except ServiceError as exc:
            await context.abort(grpc.StatusCode[exc.code], str(exc))
