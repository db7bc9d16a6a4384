"""OpenAI-compatible REST API: /v1/completions, /v1/chat/completions (SSE streaming),
/v1/models[/{id}], vLLM's /tokenize and /detokenize, drafter admin (``admin_api``), /health,
and Prometheus /metrics. Routes, the API-key guard and body parsing live here; response bodies
and streams in ``openai_responses``.

Responses follow OpenAI's shapes; every response (and the last streamed chunk) also carries a
``specgrove`` object with the request's speculation stats: steps, drafted_tokens,
accepted_tokens, mean_acceptance_length, max_batch_size, the effective drafter and tree, and
the seed its sampling used (send it back as ``seed`` to reproduce the same tokens).
With tracing on, a W3C ``traceparent`` header makes the request's span a child of the caller's.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from opentelemetry.propagate import extract
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from gateway import openai_responses
from gateway.admin_api import add_admin_routes
from gateway.api_schema import (ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, choice_spec,
                                invalid, job_spec, prompts_of)
from gateway.http_errors import error
from gateway.job import Job
from gateway.orchestrator import Overloaded
from gateway.state import GatewayState
from specgrove.auth import bearer, holds
from specgrove.errors import InvalidRequest


def create_app(state: GatewayState) -> FastAPI:
    app = FastAPI(title="specgrove gateway", docs_url=None, redoc_url=None)
    app.add_middleware(Guard, state=state)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # 404 / 405 and friends in OpenAI's shape, not FastAPI's {"detail": ...}
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code,
                     headers=getattr(exc, "headers", None))

    @app.get("/health")
    async def health():
        """200 while the target serves (speculation is optional: the draft's state is shown,
        not required); 503 while the target is down or the gateway drains."""
        ok = state.orchestrator.target_ok and not state.draining
        body = {"status": "ok" if ok else "unavailable",
                "target": "serving" if state.orchestrator.target_ok else "unavailable",
                "draft": "serving" if state.draft_ok else "unavailable",
                "draining": state.draining}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def card(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "specgrove",
                "max_model_len": state.info.max_model_len}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card(name) for name in state.model_names]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id not in state.model_names:
            return error(404, f"the model {model_id!r} does not exist; this server serves "
                              f"{', '.join(repr(n) for n in state.model_names)}", "model", "model_not_found")
        return card(model_id)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        try:
            req = await _parse(request, TokenizeRequest, state.cfg.max_body_bytes)
            state.check_model(req.model)
            ids = req.token_ids(state.codec)
        except InvalidRequest as exc:
            return error(400, str(exc), exc.field)
        return {"count": len(ids), "max_model_len": state.info.max_model_len, "tokens": ids,
                "token_strs": [state.codec.token_text(t) for t in ids] if req.return_token_strs else None}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        try:
            req = await _parse(request, DetokenizeRequest, state.cfg.max_body_bytes)
            state.check_model(req.model)
            bad = next((t for t in req.tokens if not 0 <= t < state.info.vocab_size), None)
            if bad is not None:
                raise InvalidRequest("tokens", f"token {bad} is outside the vocabulary of {state.info.vocab_size}")
        except InvalidRequest as exc:
            return error(400, str(exc), exc.field)
        return {"prompt": state.codec.decode(req.tokens)}

    add_admin_routes(app, state, lambda request, model_cls: _parse(request, model_cls, state.cfg.max_body_bytes))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(state, request, CompletionRequest)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _generate(state, request, ChatRequest)

    return app


class Guard:
    """API keys on /v1/ and the declared body size, checked before any handler runs. A plain ASGI
    middleware: Starlette's ``BaseHTTPMiddleware`` would hide client disconnects from handlers."""

    def __init__(self, app, state: GatewayState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            refused = self._refusal(scope["path"], scope.get("method", "GET"), headers)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, path: str, method: str, headers: dict[str, str]) -> JSONResponse | None:
        if path.startswith("/v1/") or path in ("/tokenize", "/detokenize"):
            # Loading and unloading drafters are admin calls, as their gRPC twins.
            call = f"{method} /v1/drafters" if path.startswith("/v1/drafters") and method != "GET" else path
            token = bearer(headers.get("authorization"))
            why = self.state.auth.refusal(call, token)
            if why is not None:
                known = holds(token, self.state.auth.keys)  # a valid key, short of admin rights
                return error(403 if known else 401, why, code="permission_denied" if known else "invalid_api_key")
        size, limit = headers.get("content-length", ""), self.state.cfg.max_body_bytes
        if size.isdigit() and int(size) > limit:
            return error(400, f"request body of {size} bytes exceeds the limit of {limit}",
                         "body", "body_too_large")
        return None


async def _parse(request: Request, model_cls, limit: int):
    raw, size = [], 0
    async for part in request.stream():  # counted as read: a chunked body has no Content-Length
        size += len(part)
        if size > limit:
            raise InvalidRequest("body", f"request body of more than {limit} bytes exceeds the limit of {limit}")
        raw.append(part)
    raw = b"".join(raw)
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise InvalidRequest("body", "JSON nested too deeply") from exc
    except ValueError as exc:  # malformed, bad UTF-8, an integer of more than 4300 digits
        raise InvalidRequest("body", f"malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("body", "the body must be a JSON object")
    try:  # "\ud800" escapes decode to lone surrogates, which no tokenizer can take
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest("body", "a string holds a lone UTF-16 surrogate (not valid Unicode)") from exc
    except RecursionError as exc:
        raise InvalidRequest("body", "JSON nested too deeply") from exc
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from exc


async def _generate(state: GatewayState, request: Request, model_cls):
    jobs: list[Job] = []
    try:
        req = await _parse(request, model_cls, state.cfg.max_body_bytes)
        if req.model not in state.model_names:
            return error(400, f"unknown model {req.model!r}; this server serves "
                              f"{', '.join(repr(n) for n in state.model_names)}", "model", "model_not_found")
        prompts = prompts_of(req, state.codec, state.info.vocab_size)
        for name in ([req.speculation.drafter, *req.speculation.shadow] if req.speculation else []):
            await state.know_drafter(name)
        default_max = state.cfg.default_max_tokens if model_cls is CompletionRequest else None
        chat = model_cls is ChatRequest
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        specs = [replace(job_spec(req, ids, state.info, state.cfg.default_budget, state.drafters, default_max),
                         request_id=rid, operation="chat" if chat else "text_completion") for ids in prompts]
        # The caller's W3C trace context (traceparent / tracestate headers), if any.
        parent = extract(request.headers) if state.tracing else None
        await state.admit()
        for spec in specs:  # n choices per prompt, each with its own seed (derived from one given)
            jobs += [state.submit(choice_spec(spec, i), parent) for i in range(req.n)]
        echo = [text for text in ([""] if chat else req.echoed(state.codec)) for _ in range(req.n)]
    except InvalidRequest as exc:
        return error(400, str(exc), exc.field)
    except Overloaded as exc:
        for j in jobs:  # admitted before the queue filled up: they leave again
            j.cancel()
        return error(429, str(exc))
    if req.stream:
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(openai_responses.sse(state, jobs, req.n, rid, chat, usage, echo),
                                 media_type="text/event-stream")
    watcher = asyncio.create_task(_cancel_on_disconnect(request, jobs))
    try:
        return await openai_responses.whole(state, jobs, req.n, rid, chat, echo)
    finally:
        watcher.cancel()


async def _cancel_on_disconnect(request: Request, jobs: list[Job], every_s: float = 0.25) -> None:
    """A non-streamed handler is not cancelled when its client goes away: watch for the
    disconnect, and cancel the jobs so they leave the batch at the next step."""
    while not all(j.done for j in jobs):
        if await request.is_disconnected():
            for j in jobs:
                j.cancel()
            return
        await asyncio.sleep(every_s)
