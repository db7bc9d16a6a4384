"""The lifecycle the target and draft services share.

Listen at once with health NOT_SERVING, load (model, drafters) off the event loop, report
SERVING; with a service token, refuse callers that do not hold it; with a ``TlsConfig``, serve
TLS (mutual with a CA: callers without a certificate from it cannot connect); on SIGTERM /
SIGINT report NOT_SERVING and let calls in flight finish within the grace period; on a fatal
error (``ServiceDown``: e.g. a tensor-parallel rank died) say so, stop, and
make ``serve_forever`` raise it so the process exits non-zero. Subclasses say what to register,
how to load and what to close.
"""
from __future__ import annotations

import asyncio
import logging

import grpc

from specgrove.auth import KeyPolicy
from specgrove.service import MAX_MESSAGE_BYTES, GrpcService, run_until_signal
from specgrove.telemetry import Telemetry, TelemetryConfig, start_telemetry
from specgrove.tls import TlsConfig

log = logging.getLogger("specgrove.service")


class ServiceServer:
    service_name = ""  # full proto service name, for health and reflection
    telemetry_name = ""  # OpenTelemetry service.name default
    max_receive_bytes = MAX_MESSAGE_BYTES  # the largest request accepted (``specgrove.service``)

    def __init__(self, host: str, port: int, grace_s: float, telemetry: TelemetryConfig,
                 service_token: str = "", tls: TlsConfig | None = None) -> None:
        self.host, self.requested_port, self.grace_s = host, port, grace_s
        self.tls = tls  # None: plaintext
        self.auth = KeyPolicy((service_token,))  # open when no token is set
        self.telemetry_cfg = telemetry
        self.telemetry = Telemetry.off()
        self.grpc: GrpcService | None = None
        self.port = 0
        self.fatal: BaseException | None = None
        self._loaded: asyncio.Future | None = None

    # --- what a service provides ---------------------------------------------------------------
    def _register(self, server: grpc.aio.Server) -> None:
        raise NotImplementedError

    async def _load(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # --- the shared lifecycle ------------------------------------------------------------------
    async def start(self) -> int:
        """Listen (NOT_SERVING) and start loading; returns the bound port."""
        self.telemetry = start_telemetry(self.telemetry_cfg, self.telemetry_name)
        # grpc.aio servers bind to the running loop: created here, not in __init__.
        self.grpc = GrpcService([self.service_name], self.telemetry.server_interceptors(), self.auth,
                                self.max_receive_bytes)
        self._register(self.grpc.server)
        self.port = await self.grpc.start(self.host, self.requested_port, self.tls)
        self._loaded = asyncio.ensure_future(self._load_then_serve())
        return self.port

    async def _load_then_serve(self) -> None:
        await self._load()
        await self.grpc.set_serving()

    async def wait_ready(self) -> None:
        """Return once loaded; raise the loading error if it failed."""
        assert self._loaded is not None, "start() first"
        await asyncio.shield(self._loaded)

    def go_down(self, exc: BaseException) -> None:
        """Serving is over: record why, report NOT_SERVING and stop (once)."""
        if self.fatal is None:
            self.fatal = exc
            log.error("%s going down: %s", self.telemetry_name, exc)
            asyncio.get_running_loop().create_task(self.stop(0))

    async def stop(self, grace_s: float | None = None) -> None:
        if self._loaded is not None and not self._loaded.done():
            self._loaded.cancel()
        await self.grpc.stop(self.grace_s if grace_s is None else grace_s)
        self._close()
        self.telemetry.shutdown()

    async def serve_forever(self) -> None:
        """Run until SIGTERM / SIGINT (graceful); raise a loading or fatal error."""
        await self.start()
        try:
            await self.wait_ready()
        except BaseException:
            await self.stop(0)
            raise
        await run_until_signal(self.stop, self.grpc.server.wait_for_termination())
        if self.fatal is not None:
            raise self.fatal
