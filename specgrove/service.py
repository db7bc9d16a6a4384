"""What the target and draft gRPC services share: server set-up, error mapping, lifecycle.

Engine calls run on one dedicated thread (``specgrove.engine_thread``) behind the in-process
ports the servicers wrap. Exceptions map to status codes once,
here, by their ``specgrove.errors`` class: caller errors -> INVALID_ARGUMENT naming the field,
unknown sequences -> NOT_FOUND, KV exhaustion -> RESOURCE_EXHAUSTED, not yet loaded or down ->
UNAVAILABLE, anything else -> INTERNAL (logged).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
from typing import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from specgrove import telemetry
from specgrove.auth import BearerAuthInterceptor, KeyPolicy
from specgrove.errors import ServiceError, Unavailable
from specgrove.tls import TlsConfig
from specgrove.tree import TreeError

log = logging.getLogger("specgrove.service")

# Message size limits. Replies may be large (a long prompt's features); what a service accepts
# is bounded by what its callers legitimately send, so an oversized request is refused by gRPC
# (RESOURCE_EXHAUSTED) before it is read into memory:
# - the gateway's public port: its request body limit (``--max-body-bytes``), as on REST;
# - the target: prompts and trees (clients split Prefill batches at 16 MiB,
#   ``specgrove.clients.PREFILL_MESSAGE_BYTES``; a 64-node tree for 256 sequences is ~200 KB);
# - the draft: one sequence's history with its features may alone be ~30 MB (8k tokens of
#   SmolLM2 with three feature layers), so it keeps the larger limit.
MAX_MESSAGE_BYTES = 64 << 20
TARGET_RECEIVE_BYTES = 32 << 20
SERVER_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports the OS considers free now (servers started elsewhere bind them)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class NotReady(Unavailable):
    """The service is still loading its model."""


class ServiceDown(Unavailable):
    """The service can no longer serve at all (e.g. a tensor-parallel rank died): it must stop."""


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, TreeError):  # a malformed tree is the caller's error
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, ServiceError):
        return grpc.StatusCode[exc.code]
    return grpc.StatusCode.INTERNAL


def rpc(method: Callable[..., Awaitable]):
    """Decorate a servicer method: map exceptions to status codes with a clear message."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            with telemetry.bound(getattr(self, "tracer", None)):
                return await method(self, request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- every failure becomes a status
            code = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method.__name__)
            if isinstance(exc, ServiceDown) and getattr(self, "on_fatal", None) is not None:
                self.on_fatal(exc)  # the server reports NOT_SERVING and shuts down
            await context.abort(code, str(exc) or type(exc).__name__)

    return wrapper


class GrpcService:
    """A grpc.aio server with health (NOT_SERVING until ready), reflection, bearer-token
    authentication when ``auth`` holds keys (``specgrove.auth``) and TLS when started with a
    ``TlsConfig`` (``specgrove.tls``)."""

    def __init__(self, service_names: Iterable[str], interceptors: Iterable = (),
                 auth: KeyPolicy | None = None, max_receive_bytes: int = MAX_MESSAGE_BYTES) -> None:
        # Authentication first: a refused call never reaches tracing or the servicer.
        chain = ([BearerAuthInterceptor(auth)] if auth is not None and auth.enabled else []) + list(interceptors)
        options = (("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", max_receive_bytes))
        self.server = grpc.aio.server(options=options, interceptors=chain or None)
        self.names = list(service_names)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            self.names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                          reflection.SERVICE_NAME], self.server)

    async def start(self, host: str, port: int, tls: TlsConfig | None = None) -> int:
        """Listen on ``host:port``: TLS (mutual when ``tls`` has a CA) or, without ``tls``,
        plaintext."""
        address = f"{host}:{port}"
        bound = (self.server.add_secure_port(address, tls.server_credentials()) if tls is not None
                 else self.server.add_insecure_port(address))
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        return bound

    async def set_serving(self) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)

    async def _set_all(self, status) -> None:
        for name in ["", *self.names]:
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result


async def run_until_signal(stop: Callable[[], Awaitable[None]], done: Awaitable) -> None:
    """Wait for ``done``; on SIGTERM / SIGINT call ``stop`` (a graceful drain) first."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    waiter = asyncio.ensure_future(done)
    signalled = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({waiter, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if signalled.done():
        log.info("signal received: draining")
        await stop()
    await waiter
