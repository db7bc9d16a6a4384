"""Authentication: API keys on the gateway's REST and gRPC ports, an admin key for drafter
loading, and the service token that keeps other local processes off the target and draft ports."""
from __future__ import annotations

import asyncio

import grpc
import httpx
import openai
import pytest

from specgrove.auth import KeyPolicy, bearer
from specgrove.clients import DraftClient, TargetClient
from specgrove.errors import Unauthenticated
from specgrove.pb.v1 import common_pb2, draft_pb2, gateway_pb2, gateway_pb2_grpc
from tests.gateway_stack import running_stack

KEY, ADMIN, TOKEN = "user-key", "admin-key", "service-token"


@pytest.fixture(scope="module")
def stack(tiny_dirs):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"], api_keys=(KEY,), admin_keys=(ADMIN,),
                       service_token=TOKEN) as s:
        yield s


def test_key_policy():
    p = KeyPolicy(("a",), ("root",), ("/admin",))
    assert p.refusal("/gen", "a") is None and p.refusal("/gen", "root") is None
    assert p.refusal("/gen", "") and p.refusal("/gen", "b")
    assert p.refusal("/admin", "a") and p.refusal("/admin", "root") is None
    assert KeyPolicy().refusal("/gen", "") is None  # no keys: open
    assert KeyPolicy((), ("root",), ("/admin",)).refusal("/gen", "") is None  # only admin calls closed
    assert bearer("Bearer  x ") == "x" and bearer("bearer x") == "x" and bearer("Basic x") == ""


def _generate(stack, metadata):
    async def main():
        async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            req = gateway_pb2.GenerateRequest(model=stack["model"], prompt="the lazy dog", max_tokens=4,
                                              sampling=common_pb2.SamplingParams(temperature=0, top_p=1))
            return [m async for m in stub.Generate(req, timeout=60, metadata=metadata)]
    return asyncio.run(main())


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong"),),
                                      (("authorization", KEY),)])
def test_grpc_generate_needs_a_key(stack, metadata):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _generate(stack, metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_generate_with_a_key(stack):
    for key in (KEY, ADMIN):
        msgs = _generate(stack, (("authorization", f"Bearer {key}"),))
        assert sum(len(m.token_ids) for m in msgs) == 4


def test_drafter_admin_needs_the_admin_key(stack):
    async def main():
        async with grpc.aio.insecure_channel(stack["grpc"]) as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            load = draft_pb2.LoadDrafterRequest(name="extra", spec="ngram")
            codes = []
            for md in (None, (("authorization", f"Bearer {KEY}"),)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.LoadDrafter(load, timeout=30, metadata=md)
                codes.append(err.value.code())
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.UnloadDrafter(draft_pb2.UnloadDrafterRequest(name="lookup"), timeout=30,
                                             metadata=md)
                codes.append(err.value.code())
            admin = (("authorization", f"Bearer {ADMIN}"),)
            info = await stub.LoadDrafter(load, timeout=60, metadata=admin)
            await stub.UnloadDrafter(draft_pb2.UnloadDrafterRequest(name="extra"), timeout=30, metadata=admin)
            names = await stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=10,
                                            metadata=(("authorization", f"Bearer {KEY}"),))
            return codes, info, names

    codes, info, names = asyncio.run(main())
    unauth, denied = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
    assert codes == [unauth, unauth, denied, denied]
    assert info.name == "extra"
    assert {d.name for d in names.drafters} == {"lookup", "small"}  # lookup survived


def test_rest_needs_a_key(stack):
    body = {"model": stack["model"], "prompt": "the lazy dog", "max_tokens": 3, "temperature": 0}
    r = httpx.post(stack["http"] + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(stack["http"] + "/v1/completions", json=body, timeout=30,
                   headers={"authorization": "Bearer nope"})
    assert r.status_code == 401
    client = openai.OpenAI(base_url=stack["http"] + "/v1", api_key=KEY, max_retries=0)
    assert client.completions.create(**body).usage.completion_tokens == 3
    assert httpx.get(stack["http"] + "/health", timeout=10).status_code == 200  # probes stay open


def test_services_refuse_callers_without_the_token(stack):
    async def main():
        results = {}
        for name, cls, addr in (("target", TargetClient, stack["target"]),
                                ("draft", DraftClient, stack["draft"])):
            for token in (None, "wrong"):
                async with cls(addr, 10, token=token) as c:
                    with pytest.raises(Unauthenticated):
                        await c.release([1, 2, 3])  # would abort other users' requests
                    assert await c.serving()  # health stays open for supervisors
            async with cls(addr, 10, token=TOKEN) as c:
                results[name] = await c.info()
        return results

    infos = asyncio.run(main())
    assert infos["target"].model == stack["model"]


def test_rest_drafter_admin_needs_the_admin_key(stack):
    base = stack["http"]

    def call(method, path, key=None, **kw):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, base + path, headers=headers, timeout=60, **kw)

    body = {"name": "rest4", "spec": "ngram:4"}
    assert call("GET", "/v1/drafters").status_code == 401
    listed = call("GET", "/v1/drafters", KEY).json()["data"]
    assert {d["name"] for d in listed} == {"lookup", "small"}
    assert call("POST", "/v1/drafters", json=body).status_code == 401
    denied = call("POST", "/v1/drafters", KEY, json=body)
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
    loaded = call("POST", "/v1/drafters", ADMIN, json=body)
    assert loaded.status_code == 200 and loaded.json()["kind"] == "ngram"
    r = call("POST", "/v1/completions", KEY, json={"model": stack["model"], "prompt": "a b a b a b", "max_tokens": 6,
                                                   "speculation": {"drafter": "rest4", "tree": "2,2"}})
    assert r.status_code == 200 and r.json()["specgrove"]["drafter"] == "rest4"  # usable at once
    assert call("DELETE", "/v1/drafters/rest4", KEY).status_code == 403
    assert call("DELETE", "/v1/drafters/rest4", ADMIN).json()["deleted"] is True
    assert call("DELETE", "/v1/drafters/lookup", ADMIN).status_code == 400  # the default cannot go
    bad = call("POST", "/v1/drafters", ADMIN, json={"name": "x", "spec": "model:/etc"})
    assert bad.status_code == 403 and "allow-list" in bad.json()["error"]["message"]


def test_drafters_command(stack):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "specgrove.cli", "drafters", "--url", stack["http"],
                               "--api-key", ADMIN, *args], capture_output=True, text=True, timeout=120)

    assert run("load", "cli3", "ngram:3").returncode == 0
    out = run("list")
    assert out.returncode == 0 and "cli3\tngram:3" in out.stdout and "lookup (default)" in out.stdout
    assert run("unload", "cli3").returncode == 0
    gone = run("unload", "cli3")
    assert gone.returncode != 0 and "no drafter named" in gone.stderr
