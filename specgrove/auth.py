"""Bearer-token authentication for every gRPC server and client of the system.

One scheme everywhere, the one OpenAI clients already use over HTTP: ``authorization: Bearer
TOKEN`` (gRPC metadata / HTTP header).

- The gateway's public ports accept its API keys (``--api-key``); admin calls (loading and
  unloading drafters) can require a separate admin key (``--admin-key``). With no key
  configured a port is open, as before.
- The target and draft services accept only callers holding the shared service token
  (``--service-token`` / ``SPECGROVE_SERVICE_TOKEN``); ``specgrove up`` makes a random one for
  its own children, so no other local process can release their sequences or load drafters.
- ``grpc.health.v1`` and reflection stay open: load balancers and supervisors probe them.

Tokens are compared in constant time (``hmac.compare_digest``).
"""
from __future__ import annotations

import hmac
from typing import Iterable, Sequence

import grpc

HEADER = "authorization"
ENV_SERVICE_TOKEN = "SPECGROVE_SERVICE_TOKEN"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def bearer(value: str | None) -> str:
    """The token of an ``authorization`` value (``Bearer TOKEN``), or ``""``."""
    if not value:
        return ""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def holds(token: str, keys: Iterable[str]) -> bool:
    return bool(token) and any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)


class KeyPolicy:
    """Who may call what: ``keys`` for every method (open when empty), ``admin_keys`` (when
    given) required for ``admin_methods`` and accepted everywhere."""

    def __init__(self, keys: Sequence[str] = (), admin_keys: Sequence[str] = (),
                 admin_methods: Iterable[str] = ()) -> None:
        self.keys, self.admin_keys = tuple(k for k in keys if k), tuple(k for k in admin_keys if k)
        self.admin_methods = frozenset(admin_methods)

    @property
    def enabled(self) -> bool:
        return bool(self.keys or self.admin_keys)

    def refusal(self, method: str, token: str) -> str | None:
        """Why a caller holding ``token`` may not call ``method``; None if it may."""
        if method in self.admin_methods and self.admin_keys:
            return None if holds(token, self.admin_keys) else "this call needs an admin key"
        if not self.keys:
            return None
        if holds(token, self.keys) or holds(token, self.admin_keys):
            return None
        return "missing or invalid API key" if not token else "invalid API key"


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED (or PERMISSION_DENIED for a valid non-admin key on an admin call)
    before the servicer runs; health and reflection pass."""

    def __init__(self, policy: KeyPolicy) -> None:
        self.policy = policy

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        token = bearer(dict(details.invocation_metadata or ()).get(HEADER))
        why = self.policy.refusal(method, token)
        if why is None:
            return handler
        known = holds(token, self.policy.keys)
        code = grpc.StatusCode.PERMISSION_DENIED if known else grpc.StatusCode.UNAUTHENTICATED
        return _refusing(handler, code, why)


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    """A handler of the same shape as ``handler`` that only aborts with ``code``."""

    async def refuse(request, context: grpc.aio.ServicerContext):
        await context.abort(code, message)

    kind = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}
    make = kind[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """Metadata a client sends with every call."""
    return ((HEADER, f"Bearer {token}"),) if token else None
