"""The EAGLE drafter: features from the target, a head that serves what it trained, lossless
speculation through the step loop (in process and over gRPC), and no leaked state.

Heads here are randomly initialised (the mechanism is under test, not the head's quality).
"""
from __future__ import annotations

import collections

import pytest
import torch
from transformers import AutoModelForCausalLM

from draft_service.drafters.eagle.config import EagleConfig
from draft_service.drafters.eagle.head import EagleHead, save_head
from draft_service.drafters.ngram import NgramDrafter
from draft_service.engine import DraftEngine
from draft_service.factory import DraftTarget, build_drafter
from specgrove.config import ModelRunConfig
from specgrove.errors import InvalidRequest
from specgrove.kv import KVCacheConfig
from specgrove.modeling.loader import load_config, load_embedding
from specgrove.sampling_params import SamplingParams
from specgrove.types import Features, PrefillRequest, TreeBudget
from tests.helpers import generate, request, target_engine

LAYERS = (0, 1)  # the tiny targets have two layers
PROMPTS = [(5, 6, 7, 8, 5, 6, 7, 8, 5, 6), (9, 10, 11), (20, 21, 22, 23, 24, 25, 26, 20, 21), (42,)]


def make_head(target_dir, out_dir, seed: int = 0, draft_vocab: int = 200) -> EagleHead:
    torch.manual_seed(seed)
    cfg = EagleConfig.for_target(load_config(target_dir), LAYERS, draft_vocab, "tiny")
    d2t = torch.randperm(cfg.target_vocab_size)[:draft_vocab].sort().values
    head = EagleHead(cfg, load_embedding(target_dir), d2t).double()
    with torch.no_grad():
        for p in head.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    save_head(head, out_dir)
    return head


@pytest.fixture(scope="module")
def head_dir(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("eagle") / "head"
    make_head(tiny_dirs["llama"], out)
    return out


def eagle_engine(tiny_dirs, head_dir, **kv) -> DraftEngine:
    run = ModelRunConfig("", "float64", "cpu", "torch", KVCacheConfig(**({"block_size": 3} | kv)))
    eagle = build_drafter(f"eagle:{head_dir}", DraftTarget(str(tiny_dirs["llama"])), run)
    return DraftEngine.of({"eagle": eagle, "ngram": NgramDrafter()}, "eagle")


def test_target_features_are_the_hidden_states_at_the_chosen_layers(tiny_dirs):
    engine = target_engine(tiny_dirs["llama"])
    prompt = (5, 6, 7, 8, 9)
    (res,) = engine.prefill([PrefillRequest(1, prompt, feature_layers=(1, 0))])
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.float64)
    outputs = {}
    for i, layer in enumerate(hf.model.layers):  # decoder layer outputs, before the final norm
        layer.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o[0] if isinstance(o, tuple) else o))
    hf(torch.tensor([prompt]))
    want = torch.cat([outputs[0][0], outputs[1][0]], dim=-1)  # layers in order, side by side
    assert (res.features.rows, res.features.width) == (len(prompt), 2 * 64)
    torch.testing.assert_close(res.features.to_tensor().double(), want, atol=0.1, rtol=1 / 128)  # bf16
    # A request without feature layers gets none, and pays nothing.
    (plain,) = engine.prefill([PrefillRequest(2, prompt)])
    assert plain.features is None


def test_serving_model_computes_what_the_head_trained(tiny_dirs, head_dir):
    """Catch-up and each tree depth of the paged serving model equal the training forward
    (unroll step s = depth s) on the same features and tokens."""
    head = EagleHead(EagleConfig.load(head_dir), load_embedding(tiny_dirs["llama"]),
                     torch.zeros(200, dtype=torch.long)).double()
    from safetensors.torch import load_file
    head.load_state_dict(load_file(str(head_dir / "model.safetensors")), strict=False)
    engine = eagle_engine(tiny_dirs, head_dir)
    drafter = engine.registry.resolve("eagle").drafter
    tokens = (5, 6, 7, 8, 9, 10, 11)
    target = target_engine(tiny_dirs["llama"])
    (res,) = target.prefill([PrefillRequest(1, tokens, feature_layers=LAYERS)])
    feats = res.features.to_tensor().double()  # [7, W]: row t predicted token t + 1
    # training view: position t (1..6) reads f_{t-1} and x_t
    steps = head.forward_train(feats[None, :-1], torch.tensor([tokens[1:]]), steps=3)
    want = [head.logits(h)[0] for h in steps]
    # serving view: register with history tokens[:5] (pending = tokens[4]), then a chain
    from draft_service.drafters.base import DraftInput
    hist = list(tokens[:5])
    inp = DraftInput(1, hist, TreeBudget(branching=(1, 1)), features=Features.from_tensor(feats[:4]))
    growths_logits = []
    orig = drafter._add_children
    drafter._add_children = lambda i, g, nodes, lg, depth: (growths_logits.extend(lg), orig(i, g, nodes, lg, depth))
    drafter.propose([inp])
    drafter._add_children = orig
    # depth 0 (the root, position 4): step 0 at position 4 -> row 3 of the training view
    torch.testing.assert_close(growths_logits[0], want[0][3], atol=1e-9, rtol=1e-9)
    # depth 1 (position 5, feature = root's output): step 1 at row 4, given the same token
    child = growths_logits[1]
    tree_token = drafter.vocab_map[growths_logits[0].argmax()].item()
    steps = head.forward_train(feats[None, :-1], torch.tensor([tokens[1:5] + (tree_token, 0)]), steps=2)
    torch.testing.assert_close(child, head.logits(steps[1])[0][4], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("budget", [TreeBudget(branching=(3, 2, 1)), TreeBudget(max_nodes=8, max_depth=4, top_k=3),
                                    TreeBudget(branching=(1, 1, 1, 1))], ids=["static", "dynamic", "chain"])
def test_eagle_greedy_equals_plain_greedy(tiny_dirs, head_dir, budget):
    target = target_engine(tiny_dirs["llama"], shuffle_seed=3)
    drafts = eagle_engine(tiny_dirs, head_dir)
    plain = [o.token_ids for o in generate(target, drafts, [request(p, 24) for p in PROMPTS])]
    free = target.runner.blocks.num_free_blocks
    eagle_runner = drafts.registry.resolve("eagle").drafter.runner
    draft_free = eagle_runner.blocks.num_free_blocks
    for _ in range(2):  # again: no state may leak from one round to the next
        outs = generate(target, drafts, [request(p, 24, budget=budget, drafter="eagle") for p in PROMPTS])
        assert [o.token_ids for o in outs] == plain
        assert all(o.stats.drafted_tokens > 0 for o in outs)
    assert target.runner.blocks.num_free_blocks == free and target.num_sequences == 0
    assert eagle_runner.blocks.num_free_blocks == draft_free and drafts.num_sequences == 0


def test_adaptive_switching_catches_up_and_times_only_steady_drafts(tiny_dirs, head_dir, monkeypatch):
    """The load controller turning the default EAGLE speculation off and on (here on a script):
    when it comes back on, the head catches up over the features of every token committed
    meanwhile, output stays equal to plain greedy, and only steady-state drafts (at most one
    step's commits to catch up on) are timed for the controller, not the catch-ups."""
    from gateway.controller import SpeculationController
    from gateway.speculation import Proposer

    script = iter([False, True, True, False, False, False, False, True, True] * 100)
    monkeypatch.setattr(SpeculationController, "should_speculate", lambda self, *a: next(script))
    timed, drafts = [], []
    monkeypatch.setattr(SpeculationController, "observe_draft", lambda self, n, s: timed.append(n))
    original = Proposer._draft

    async def spy(self, jobs, budgets, shadows=()):
        catch_up = max((len(j.new_tokens) for j in jobs if j.draft_synced), default=0)
        before = len(timed)
        out = await original(self, jobs, budgets, shadows)
        drafts.append((catch_up, len(timed) - before))
        return out

    monkeypatch.setattr(Proposer, "_draft", spy)
    target = target_engine(tiny_dirs["llama"], shuffle_seed=3)
    engine = eagle_engine(tiny_dirs, head_dir)
    plain = [o.token_ids for o in generate(target, engine, [request(p, 30) for p in PROMPTS])]
    budget = TreeBudget(max_nodes=6, max_depth=3, top_k=2)
    outs = generate(target, engine, [request(p, 30, budget=budget, adaptive=True) for p in PROMPTS])
    assert [o.token_ids for o in outs] == plain
    assert all(0 < o.stats.drafted_tokens for o in outs)
    assert any(c > budget.depth + 1 for c, _ in drafts)  # catch-ups happened
    assert all(t == 0 for c, t in drafts if c > budget.depth + 1)  # and were not timed
    assert sum(t for _, t in drafts) > 0  # steady steps were


def test_eagle_sampling_stays_lossless(tmp_path_factory):
    """Chi-square of 3-token samples (one seed each) against the exactly enumerated target
    distribution, vocabulary 16, with coupled EAGLE drafts."""
    from tests.test_sampling import ALPHA, chi_square_p, exact_joint
    from tests.tiny_models import save_tiny_model

    root = tmp_path_factory.mktemp("eagle16")
    model = save_tiny_model(root / "t", "llama", seed=10, with_tokenizer=False, vocab_size=16)
    make_head(model, root / "head", seed=5, draft_vocab=12)
    target = target_engine(model, num_blocks=4096)
    run = ModelRunConfig("", "float64", "cpu", "torch", KVCacheConfig(4, 4096))
    drafts = DraftEngine.of({"eagle": build_drafter(f"eagle:{root / 'head'}", DraftTarget(str(model)), run)},
                            "eagle")
    prompt, new, n = (3, 1, 4, 1), 3, 3000
    params = SamplingParams(temperature=1.0, top_p=0.9)
    counts = collections.Counter()
    for start in range(0, n, 500):
        outs = generate(target, drafts, [request(prompt, new, SamplingParams(1.0, top_p=0.9, seed=s),
                                                 TreeBudget(branching=(3, 2)), "eagle")
                                         for s in range(start, start + 500)])
        counts.update(tuple(o.token_ids) for o in outs)
        assert all(o.stats.drafted_tokens > 0 for o in outs)
    assert chi_square_p(counts, exact_joint(model, params, prompt, new), n) > ALPHA


def test_head_refuses_a_target_it_does_not_fit(tiny_dirs, head_dir, tmp_path):
    from tests.tiny_models import save_tiny_model

    run = ModelRunConfig("", "float64", "cpu", "torch", KVCacheConfig(4, 64))
    narrow = save_tiny_model(tmp_path / "narrow", "llama", hidden_size=32, with_tokenizer=False)
    with pytest.raises(InvalidRequest, match="hidden size 64 vs the target's 32"):
        build_drafter(f"eagle:{head_dir}", DraftTarget(str(narrow)), run)
    shallow = save_tiny_model(tmp_path / "shallow", "llama", seed_layers=1, with_tokenizer=False)
    with pytest.raises(InvalidRequest, match=r"feature layers \[1\] outside the target's 1 layers"):
        build_drafter(f"eagle:{head_dir}", DraftTarget(str(shallow)), run)
    with pytest.raises(InvalidRequest, match="no EAGLE head"):
        build_drafter(f"eagle:{tmp_path / 'nothing'}", DraftTarget(str(tiny_dirs["llama"])), run)


def test_eagle_through_the_gateway_and_grpc_services(tiny_dirs, head_dir):
    """Features travel target -> gateway -> draft service over gRPC; output equals plain."""
    import asyncio
    import time

    import grpc
    import httpx

    from specgrove.pb.v1 import draft_pb2, gateway_pb2_grpc
    from tests.gateway_stack import running_stack

    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"], allow_drafters=(str(head_dir),)) as stack:
        async def load():
            async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
                return await gateway_pb2_grpc.GatewayStub(ch).LoadDrafter(
                    draft_pb2.LoadDrafterRequest(name="eagle", spec=f"eagle:{head_dir}"), timeout=60)

        info = asyncio.run(load())
        assert info.kind == "eagle" and list(info.feature_layers) == list(LAYERS)
        gw = stack["gw"]
        free = stack["loop"].run(gw.state.target.replicas[0].port.info()).free_blocks
        texts = {}
        for name, spec in (("plain", {"drafter": "none"}), ("eagle", {"drafter": "eagle", "tree": "2,2"}),
                           ("eagle dynamic", {"drafter": "eagle", "tree": {"nodes": 6, "depth": 3}})):
            bodies = [{"model": stack["model"], "prompt": p, "max_tokens": 20, "temperature": 0,
                       "ignore_eos": True, "speculation": spec}
                      for p in ("the quick brown fox", "hello world hello", "fox")]

            async def send():
                async with httpx.AsyncClient(timeout=60) as client:
                    return [r.json() for r in await asyncio.gather(
                        *(client.post(stack["http"] + "/v1/completions", json=b) for b in bodies))]

            outs = asyncio.run(send())
            texts[name] = [o["choices"][0]["text"] for o in outs]
            if name != "plain":
                assert all(o["specgrove"]["drafter"] == "eagle" and o["specgrove"]["drafted_tokens"] > 0
                           for o in outs)
        assert texts["eagle"] == texts["plain"] and texts["eagle dynamic"] == texts["plain"]
        deadline = time.monotonic() + 10
        while not gw.state.orchestrator.idle and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stack["loop"].run(gw.state.target.replicas[0].port.info()).free_blocks == free
        assert stack["loop"].run(gw.state.draft.info()).num_sequences == 0


def test_held_features_keep_the_last_rows_in_order(monkeypatch):
    """While speculation is off a job holds the target's features until a Propose takes them:
    the rows come out in order, at most MAX_FEATURE_ROWS of them (the most recent), once."""
    import gateway.job as job_module
    from gateway.job import Job

    monkeypatch.setattr(job_module, "MAX_FEATURE_ROWS", 5)
    job = Job(1, request((1, 2, 3), 4), None, frozenset())
    assert job.take_features() is None
    rows = [torch.full((n, 2), float(i)) for i, n in enumerate((3, 1, 2, 1))]  # 7 rows in 4 parts
    for part in rows:
        job.add_features(Features.from_tensor(part))
    job.add_features(None)
    taken = job.take_features()
    assert taken.rows == 5
    assert torch.equal(taken.to_tensor().float(), torch.cat(rows)[-5:])
    assert job.take_features() is None  # handed over once
    many = [torch.full((2, 2), float(i)) for i in range(10)]  # old parts fall out of the window
    for part in many:
        job.add_features(Features.from_tensor(part))
    assert job._unsent_rows <= 5 + 2
    assert torch.equal(job.take_features().to_tensor().float(), torch.cat(many)[-5:])
    job.add_features(Features.from_tensor(rows[0]))
    job.drop_features()
    assert job.take_features() is None
