"""The target and draft services as real gRPC servers on loopback (tiny float64 models)."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from draft_service.load_policy import LoadPolicy
from draft_service.server import DraftServer, DraftServerConfig
from gateway.offline import complete
from specgrove.clients import DraftClient, TargetClient
from specgrove.config import ModelRunConfig
from specgrove.errors import InvalidRequest, ServiceError
from specgrove.kv import KVCacheConfig
from specgrove.pb.v1 import common_pb2, target_pb2
from specgrove.tree import TokenTree
from specgrove.types import DraftPrefill, PrefillRequest, ProposeRequest, TreeBudget, VerifyItem
from target_service.local import TargetLimits
from target_service.server import TargetServer, TargetServerConfig
from tests.grpc_harness import ServerLoop
from tests.helpers import draft_engine, generate, request, target_engine

PROMPTS = {1: (5, 6, 7, 8, 5, 6, 7, 8, 5), 2: (9, 10, 11), 3: (20, 21, 22, 23, 24, 20, 21), 4: (42,)}
MAX_TOKENS = 20
KV_BLOCKS = 160  # x block size 4 = 640 tokens: small enough to exhaust on purpose


@pytest.fixture(scope="module")
def services(tiny_dirs, tmp_path_factory):
    loop = ServerLoop()
    run = ModelRunConfig(str(tiny_dirs["llama"]), "float64", "cpu", "torch", KVCacheConfig(4, KV_BLOCKS))
    target_cfg = TargetServerConfig(run, port=0, limits=TargetLimits(16, 32), grace_s=1)
    draft_run = ModelRunConfig("", "float64", "cpu", "torch", KVCacheConfig(3, 1024))
    draft_cfg = DraftServerConfig(
        str(tiny_dirs["llama"]), (("lookup", "ngram"), ("small", f"model:{tiny_dirs['draft']}")),
        "lookup", draft_run, port=0, grace_s=1,
        load_policy=LoadPolicy((str(tmp_path_factory.getbasetemp()),)))  # the tests' own models

    async def start():  # grpc.aio servers belong to the loop they are created in
        target, draft = TargetServer(target_cfg), DraftServer(draft_cfg)
        ports = await target.start(), await draft.start()
        await target.wait_ready()
        await draft.wait_ready()
        return target, draft, ports

    target, draft, (tport, dport) = loop.run(start())
    yield {"target": f"127.0.0.1:{tport}", "draft": f"127.0.0.1:{dport}", "dirs": tiny_dirs}
    loop.run(target.stop(0))
    loop.run(draft.stop(0))
    loop.close()


@pytest.fixture(scope="module")
def plain_tokens(tiny_dirs):
    engine = target_engine(tiny_dirs["llama"])
    outs = generate(engine, draft_engine(), [request(p, MAX_TOKENS) for p in PROMPTS.values()])
    return {s: o.token_ids for s, o in zip(PROMPTS, outs)}


def _with_clients(services, body):
    async def main():
        async with TargetClient(services["target"], 10) as t, DraftClient(services["draft"], 10) as d:
            return await body(t, d)
    return asyncio.run(main())


async def _complete(t, d, prompts: dict, budget: TreeBudget, drafter: str) -> dict:
    """Greedy generation through the gateway's orchestrator over the gRPC clients."""
    outs = await complete(t, d, [request(p, MAX_TOKENS, budget=budget, drafter=drafter)
                                 for p in prompts.values()])
    assert all(o.error is None for o in outs), [o.error for o in outs]
    return {s: o.token_ids for s, o in zip(prompts, outs)}


@pytest.mark.parametrize("drafter,budget", [
    ("small", TreeBudget(branching=(3, 2, 1))),
    ("small", TreeBudget(max_nodes=8, max_depth=3, top_k=2)),
    ("lookup", TreeBudget(max_nodes=6, max_depth=4)),
    ("", TreeBudget.off()),
])
def test_orchestrator_over_grpc_matches_in_process_greedy(services, plain_tokens, drafter, budget):
    async def body(t, d):
        free = (await t.info()).free_blocks
        out = await _complete(t, d, PROMPTS, budget, drafter)
        assert (await t.info()).free_blocks == free and (await d.info()).num_sequences == 0
        return out

    assert _with_clients(services, body) == plain_tokens


class SwappingDraft:
    """The real draft client, which also records each step's drafters and runs admin calls
    (load, unload) before the steps ``actions`` names: a hot swap in the middle of generation."""

    def __init__(self, client: DraftClient, actions: dict) -> None:
        self.client, self.actions, self.steps = client, actions, []

    def __getattr__(self, name):
        return getattr(self.client, name)

    async def propose(self, requests):
        action = self.actions.get(len(self.steps))
        if action is not None:
            await action(self.client)
        results = await self.client.propose(requests)
        self.steps.append(({p.drafter for p in results}, sorted(x.name for x in await self.client.list_drafters())))
        return results


def test_hot_swap_while_generating(services, plain_tokens):
    async def load(d):
        info = await d.load_drafter("fresh", f"model:{services['dirs']['draft']}")
        assert info.kind == "model" and not info.is_default

    async def unload(d):
        await d.unload_drafter("fresh")

    async def body(t, d):
        await load(d)  # the requests name "fresh"; it goes away at step 3 and comes back at 6
        swapping = SwappingDraft(d, {3: unload, 6: load})
        prompts = {1: PROMPTS[1], 3: PROMPTS[3]}
        out = await _complete(t, swapping, prompts, TreeBudget(branching=(2, 2)), "fresh")
        await unload(d)
        return out, swapping.steps

    out, steps = _with_clients(services, body)
    assert steps[0] == ({"fresh"}, ["fresh", "lookup", "small"])
    assert steps[3] == ({"lookup"}, ["lookup", "small"])  # an unloaded name falls back to the default
    assert steps[6] == ({"fresh"}, ["fresh", "lookup", "small"])  # reloaded: catches up from history
    assert out == {s: plain_tokens[s] for s in out}


def test_bad_inputs_get_clear_statuses_and_harm_nobody(services, plain_tokens):
    async def body(t, d):
        first = (await t.prefill([PrefillRequest(500, PROMPTS[2])]))[0].first_token
        await d.prefill([DraftPrefill(500, PROMPTS[2] + (first,))])
        errors = {}

        async def expect(name, call, code, needle):
            """The status code, for raw stub calls, or the error class the clients raise."""
            with pytest.raises((grpc.aio.AioRpcError, ServiceError)) as info:
                await call
            exc = info.value
            got = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else exc.code
            text = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            assert got == code.name, (name, text)
            assert needle in text, (name, text)
            errors[name] = text

        bad_parent = target_pb2.VerifyItem(seq_id=500, tree=common_pb2.TokenTree(
            token_ids=[first, 3, 4], parents=[-1, 2, 0]))
        await expect("parent after child", t.stub.Verify(target_pb2.VerifyBatch(items=[bad_parent])),
                     grpc.StatusCode.INVALID_ARGUMENT, "items[0].tree")
        await expect("token out of range", t.verify([VerifyItem(500, TokenTree((first, 999), (-1, 0)))]),
                     grpc.StatusCode.INVALID_ARGUMENT, "token 999 is outside the vocabulary")
        wide = TokenTree((first,) + tuple(range(40)), (-1,) + (0,) * 40)
        await expect("too many nodes", t.verify([VerifyItem(500, wide)]),
                     grpc.StatusCode.INVALID_ARGUMENT, "exceed the limit of 32")
        huge = target_pb2.VerifyItem(seq_id=500, tree=common_pb2.TokenTree(
            token_ids=[first] * 200_000, parents=[-1] + [0] * 199_999))
        await expect("huge tree, refused before parsing",
                     t.stub.Verify(target_pb2.VerifyBatch(items=[huge]), timeout=2),
                     grpc.StatusCode.INVALID_ARGUMENT, "200000 nodes exceed the limit of 32")
        await expect("wrong root", t.verify([VerifyItem(500, TokenTree.root_only((first + 1) % 320))]),
                     grpc.StatusCode.INVALID_ARGUMENT, "pending token")
        await expect("unknown sequence", t.verify([VerifyItem(999, TokenTree.root_only(1))]),
                     grpc.StatusCode.NOT_FOUND, "unknown sequence 999")
        await expect("duplicate ids", t.verify([VerifyItem(500, TokenTree.root_only(first))] * 2),
                     grpc.StatusCode.INVALID_ARGUMENT, "duplicate")
        await expect("existing id", t.prefill([PrefillRequest(500, (1, 2))]),
                     grpc.StatusCode.INVALID_ARGUMENT, "already exists")
        bad_sampling = target_pb2.PrefillRequest(seq_id=501, prompt_ids=[1],
                                                 sampling=common_pb2.SamplingParams(temperature=-1, top_p=1))
        await expect("temperature", t.stub.Prefill(target_pb2.PrefillBatch(requests=[bad_sampling])),
                     grpc.StatusCode.INVALID_ARGUMENT, "requests[0].temperature")
        bad_top_p = target_pb2.PrefillRequest(seq_id=501, prompt_ids=[1],
                                              sampling=common_pb2.SamplingParams(temperature=1, top_p=0))
        await expect("top_p", t.stub.Prefill(target_pb2.PrefillBatch(requests=[bad_top_p])),
                     grpc.StatusCode.INVALID_ARGUMENT, "requests[0].top_p")
        huge = [PrefillRequest(600 + i, tuple(range(2, 202))) for i in range(4)]  # 200 blocks
        await expect("kv exhausted", t.prefill(huge), grpc.StatusCode.RESOURCE_EXHAUSTED, "KV blocks")
        await expect("unknown drafter", d.propose([ProposeRequest(500, (), TreeBudget(), "nope")]),
                     grpc.StatusCode.INVALID_ARGUMENT, "unknown drafter 'nope'")
        await expect("draft unknown seq", d.propose([ProposeRequest(777, (), TreeBudget())]),
                     grpc.StatusCode.NOT_FOUND, "unknown sequence 777")
        await expect("empty prompt", t.prefill([PrefillRequest(502, ())]),
                     grpc.StatusCode.INVALID_ARGUMENT, "empty")
        await t.release([500])
        await d.release([500])
        return errors

    async def healthy(t, d):
        # A healthy batch running at the same time as every bad call above.
        return await _complete(t, d, {1: PROMPTS[1], 3: PROMPTS[3]}, TreeBudget(branching=(2, 2)), "small")

    async def both(t, d):
        return await asyncio.gather(body(t, d), healthy(t, d))

    errors, good = _with_clients(services, both)
    assert len(errors) == 14
    assert good == {1: plain_tokens[1], 3: plain_tokens[3]}


def test_vocabulary_mismatch_is_refused(services, tmp_path):
    from tests.tiny_models import save_tiny_model

    other = save_tiny_model(tmp_path / "v400", "llama", vocab_size=400, with_tokenizer=False)

    async def body(t, d):
        with pytest.raises(InvalidRequest, match="vocabulary of 400 tokens but the target has 320"):
            await d.load_drafter("bad", f"model:{other}")
        with pytest.raises(InvalidRequest, match="is the default drafter"):
            await d.unload_drafter("lookup")  # the default cannot go
        return [x.name for x in await d.list_drafters()]

    assert _with_clients(services, body) == ["lookup", "small"]


def test_health_reflection_and_info(services):
    async def body(t, d):
        out = {}
        for name, addr in (("target", services["target"]), ("draft", services["draft"])):
            async with grpc.aio.insecure_channel(addr) as ch:
                resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                out[name] = resp.status == health_pb2.HealthCheckResponse.SERVING
                stub = reflection_pb2_grpc.ServerReflectionStub(ch)
                reqs = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                async for r in stub.ServerReflectionInfo(reqs, timeout=5):
                    out[name + "_services"] = sorted(s.name for s in r.list_services_response.service)
        info = await t.info()
        assert info.vocab_size == 320 and info.total_blocks == KV_BLOCKS and info.max_tree_nodes == 32
        assert (await d.info()).default_drafter == "lookup"
        return out

    out = _with_clients(services, body)
    assert out["target"] and out["draft"]
    assert "specgrove.v1.TargetService" in out["target_services"]
    assert "specgrove.v1.DraftService" in out["draft_services"]
    assert "grpc.health.v1.Health" in out["draft_services"]


def test_stubs_are_generated_from_the_protos():
    from specgrove.pb.generate import check

    assert check(), "run: python -m specgrove.pb.generate"
