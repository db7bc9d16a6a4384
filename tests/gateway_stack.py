"""A whole system on loopback for a test module: target and draft gRPC servers (tiny float64
models) and the gateway (REST + gRPC) over them, in a background event loop."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from draft_service.load_policy import LoadPolicy
from draft_service.server import DraftServer, DraftServerConfig
from gateway.orchestrator import SchedulerConfig
from gateway.server import GatewayServer
from gateway.state import GatewayConfig
from specgrove.config import ModelRunConfig
from specgrove.kv import KVCacheConfig
from specgrove.tls import TlsConfig
from specgrove.types import TreeBudget
from target_service.local import TargetLimits
from target_service.server import TargetServer, TargetServerConfig
from tests.grpc_harness import ServerLoop


@contextmanager
def running_stack(target_dir: Path, draft_dir: Path, max_batch: int = 16, max_waiting: int = 64,
                  api_keys: tuple[str, ...] = (), admin_keys: tuple[str, ...] = (), service_token: str = "",
                  tls: TlsConfig | None = None, allow_drafters: tuple[str, ...] = ()):
    """Yields ``{"http", "grpc", "target", "draft", "model", "gw", "loop"}``; drafters ``lookup``
    (n-gram, the default) and ``small`` (the model at ``draft_dir``); default tree 6:3, adaptive.
    ``api_keys`` / ``admin_keys`` protect the gateway, ``service_token`` the two services;
    ``tls`` is every server's certificate and the gateway's client certificate (mutual TLS);
    ``allow_drafters``: what LoadDrafter may load besides those two (``LoadPolicy``)."""
    loop = ServerLoop()
    model = str(target_dir)
    run = ModelRunConfig(model, "float64", "cpu", "torch", KVCacheConfig(4, 1024))
    draft_run = ModelRunConfig("", "float64", "cpu", "torch", KVCacheConfig(4, 1024))

    async def start():
        target = TargetServer(TargetServerConfig(run, port=0, limits=TargetLimits(64, 32), grace_s=1,
                                                 service_token=service_token, tls=tls))
        draft = DraftServer(DraftServerConfig(model, (("lookup", "ngram"), ("small", f"model:{draft_dir}")),
                                              "lookup", draft_run, port=0, grace_s=1,
                                              service_token=service_token, tls=tls,
                                              load_policy=LoadPolicy(allow_drafters)))
        tport, dport = await target.start(), await draft.start()
        await target.wait_ready()
        await draft.wait_ready()
        gw = GatewayServer(GatewayConfig(
            f"127.0.0.1:{tport}", f"127.0.0.1:{dport}", port=0, grpc_port=0,
            default_budget=TreeBudget(max_nodes=6, max_depth=3),
            scheduler=SchedulerConfig(max_batch=max_batch, max_waiting=max_waiting), grace_s=1,
            api_keys=api_keys, admin_keys=admin_keys, service_token=service_token, tls=tls))
        await gw.start()
        return target, draft, gw

    target, draft, gw = loop.run(start())
    try:
        yield {"http": f"http://127.0.0.1:{gw.http_port}", "grpc": f"127.0.0.1:{gw.grpc_port}",
               "target": f"127.0.0.1:{target.port}", "draft": f"127.0.0.1:{draft.port}",
               "model": model, "gw": gw, "loop": loop}
    finally:
        loop.run(gw.stop(0))
        loop.run(target.stop(0))
        loop.run(draft.stop(0))
        loop.close()
