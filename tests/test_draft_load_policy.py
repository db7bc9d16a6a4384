"""The draft service's run-time load allow-list: a caller holding the admin key cannot make the
service read an arbitrary file, nor fill its memory with drafters."""
from __future__ import annotations


import pytest

from draft_service.load_policy import LoadPolicy
from draft_service.server import DraftServer, DraftServerConfig
from specgrove.clients import DraftClient
from specgrove.config import ModelRunConfig
from specgrove.errors import InvalidRequest, PermissionDenied, ResourceExhausted
from specgrove.kv import KVCacheConfig
from tests.grpc_harness import ServerLoop


def test_policy_allows_fileless_kinds_listed_paths_and_shipped_heads(tmp_path):
    allowed = tmp_path / "drafts"
    (allowed / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (allowed / "link").symlink_to(tmp_path / "outside")
    policy = LoadPolicy((str(allowed),), max_drafters=4).with_startup(("model:/models/startup", "ngram"))
    for spec in ("ngram", "ngram:4", "suffix", f"model:{allowed}", f"model:{allowed / 'a'}",
                 "model:/models/startup", "eagle:smollm2-135m-instruct"):
        policy.check(spec, loaded=1)
    for spec in (f"model:{tmp_path / 'outside'}", f"model:{allowed}/../outside", f"model:{allowed / 'link'}",
                 "model:/etc", "eagle:/tmp/any-head", "model:smollm2-135m-instruct"):
        with pytest.raises(PermissionDenied, match="allow-list"):
            policy.check(spec, loaded=1)
    with pytest.raises(ResourceExhausted, match="max-drafters 4"):
        policy.check("ngram", loaded=4)


def test_load_drafter_through_the_service_follows_the_policy(tiny_dirs, tmp_path):
    from tests.tiny_models import save_tiny_model

    elsewhere = save_tiny_model(tmp_path / "elsewhere", "llama", seed=5, seed_layers=1, with_tokenizer=False)
    loop = ServerLoop()
    run = ModelRunConfig("", "float64", "cpu", "torch", KVCacheConfig(3, 256))
    cfg = DraftServerConfig(str(tiny_dirs["llama"]), (("lookup", "ngram"), ("small", f"model:{tiny_dirs['draft']}")),
                            "lookup", run, port=0, grace_s=1, load_policy=LoadPolicy((), max_drafters=3))

    async def start():
        server = DraftServer(cfg)
        await server.start()
        await server.wait_ready()
        return server

    server = loop.run(start())

    async def body():
        async with DraftClient(f"127.0.0.1:{server.port}") as d:
            with pytest.raises(PermissionDenied, match="allow-list"):
                await d.load_drafter("other", f"model:{elsewhere}")
            # a start-up drafter's model may be loaded again under another name
            info = await d.load_drafter("small2", f"model:{tiny_dirs['draft']}")
            assert info.kind == "model"
            with pytest.raises(ResourceExhausted, match="unload one first"):
                await d.load_drafter("more", "ngram:3")
            await d.unload_drafter("small2")
            await d.load_drafter("more", "ngram:3")
            with pytest.raises(InvalidRequest, match="already loaded"):
                await d.load_drafter("more", "ngram:2")
            return sorted(i.name for i in await d.list_drafters())

    try:
        assert loop.run(body()) == ["lookup", "more", "small"]
    finally:
        loop.run(server.stop(0))
        loop.close()
