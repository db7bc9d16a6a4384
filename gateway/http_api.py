"""OpenAI-compatible REST API: /v1/completions, /v1/chat/completions (SSE streaming),
/v1/models, /health, and Prometheus /metrics.

Responses follow OpenAI's shapes; every response (and the last streamed chunk) also carries a
``specgrove`` object with the request's speculation stats: steps, drafted_tokens,
accepted_tokens, mean_acceptance_length, max_batch_size, the effective drafter and tree, and
the seed its sampling used (send it back as ``seed`` to reproduce the same tokens).
With tracing on, a W3C ``traceparent`` header makes the request's span a child of the caller's.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from opentelemetry.propagate import extract
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from gateway.api_schema import ChatRequest, CompletionRequest, invalid, job_spec, prompt_ids_of
from gateway.job import Delta, Finished, Job
from gateway.logprobs_format import chat_logprobs, completion_logprobs
from gateway.orchestrator import Overloaded
from gateway.speculation import effective_speculation
from gateway.state import GatewayState
from specgrove.auth import bearer
from specgrove.errors import InvalidRequest


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object, for responses and for the last event of a failed stream."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
            405: "invalid_request_error", 429: "rate_limit_error", 499: "cancelled",
            503: "service_unavailable"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error(status: int, message: str, param: str | None = None, code: str | None = None,
          headers: dict | None = None) -> JSONResponse:
    if status == 429 or status == 503:  # OpenAI clients honour it when they retry
        headers = {"Retry-After": "1", **(headers or {})}
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


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

    def card() -> dict:
        return {"id": state.model_id, "object": "model", "created": 0, "owned_by": "specgrove",
                "max_model_len": state.info.max_model_len}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != state.model_id:
            return error(404, f"the model {model_id!r} does not exist; this server serves "
                              f"{state.model_id!r}", "model", "model_not_found")
        return card()

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
            refused = self._refusal(scope["path"], headers)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, path: str, headers: dict[str, str]) -> JSONResponse | None:
        if path.startswith("/v1/"):
            why = self.state.auth.refusal(path, bearer(headers.get("authorization")))
            if why is not None:
                return error(401, why, code="invalid_api_key")
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
    try:
        req = await _parse(request, model_cls, state.cfg.max_body_bytes)
        if req.model != state.model_id:
            return error(400, f"unknown model {req.model!r}; this server serves {state.model_id!r}",
                         "model", "model_not_found")
        ids = prompt_ids_of(req, state.codec, state.info.vocab_size)
        await state.know_drafter(req.speculation.drafter if req.speculation else None)
        default_max = state.cfg.default_max_tokens if model_cls is CompletionRequest else None
        spec = job_spec(req, ids, state.info, state.cfg.default_budget, state.drafters, default_max)
        chat = model_cls is ChatRequest
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        spec = replace(spec, request_id=rid, operation="chat" if chat else "text_completion")
        # The caller's W3C trace context (traceparent / tracestate headers), if any.
        await state.admit()
        job = state.submit(spec, extract(request.headers) if state.tracing else None)
    except InvalidRequest as exc:
        return error(400, str(exc), exc.field)
    except Overloaded as exc:
        return error(429, str(exc))
    if req.stream:
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(state, job, rid, chat, usage), media_type="text/event-stream")
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        return await _whole(state, job, rid, chat)
    finally:
        watcher.cancel()


async def _cancel_on_disconnect(request: Request, job: Job, every_s: float = 0.25) -> None:
    """A non-streamed handler is not cancelled when its client goes away: watch for the
    disconnect, and cancel the job so it leaves the batch at the next step."""
    while not job.done:
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(every_s)


def _stats(state: GatewayState, job: Job) -> dict:
    st = job.stats
    eff = effective_speculation(job, state.default_drafter)
    return {"steps": st.steps, "drafted_tokens": st.drafted_tokens,
            "accepted_tokens": st.accepted_tokens,
            "mean_acceptance_length": round(st.mean_acceptance_length, 4),
            "max_batch_size": st.max_batch_size,
            "drafter": eff.drafter, "tree": eff.tree_json(),
            "seed": job.spec.sampling.seed}


def _usage(job: Job) -> dict:
    n_in, n_out = len(job.spec.prompt_ids), len(job.tokens)
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def _logprobs(state: GatewayState, job: Job, chat: bool, logprobs: list, offset: int = 0) -> dict | None:
    """The choice's ``logprobs`` in the route's shape; None when the request did not ask."""
    if job.spec.sampling.logprobs is None:
        return None
    if chat:
        return chat_logprobs(state.codec, logprobs)
    return completion_logprobs(state.codec, logprobs, offset)


async def _whole(state: GatewayState, job: Job, rid: str, chat: bool):
    text, reason, logprobs = [], None, []
    try:
        while True:
            ev = await job.events.get()
            if isinstance(ev, Delta):
                text.append(ev.text)
                logprobs += ev.logprobs
            elif isinstance(ev, Finished):
                reason = ev.reason
                break
            else:
                return error(ev.status, ev.message)
    finally:
        job.cancel()  # no-op once finished; frees the sequence if this handler was cancelled
    body = "".join(text)
    lp = _logprobs(state, job, chat, logprobs)
    choice = ({"index": 0, "message": {"role": "assistant", "content": body},
               "finish_reason": reason, "logprobs": lp} if chat else
              {"index": 0, "text": body, "finish_reason": reason, "logprobs": lp})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": state.model_id, "choices": [choice],
            "usage": _usage(job), "specgrove": _stats(state, job)}


async def _sse(state: GatewayState, job: Job, rid: str, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    created, obj = int(time.time()), "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list, **extra) -> str:
        body = {"id": rid, "object": obj, "created": created, "model": state.model_id,
                "choices": choices, **({"usage": None} if include_usage else {}), **extra}
        return f"data: {json.dumps(body)}\n\n"

    offset = 0  # of the next token in the completion's text (completions' text_offset)

    def choice(text: str | None, reason: str | None, first: bool = False, logprobs=()) -> dict:
        nonlocal offset
        lp = _logprobs(state, job, chat, list(logprobs), offset) if logprobs else None
        if lp is not None and not chat:
            offset += sum(len(t) for t in lp["tokens"])
        if chat:
            delta = ({"role": "assistant", "content": text or ""} if first
                     else ({"content": text} if text else {}))
            return {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": lp}
        return {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": lp}

    try:
        first = True
        while True:
            ev = await job.events.get()
            if isinstance(ev, Delta):
                if ev.text or first or ev.logprobs:
                    yield chunk([choice(ev.text, None, first, ev.logprobs)])
                    first = False
            elif isinstance(ev, Finished):
                yield chunk([choice(None, ev.reason)], specgrove=_stats(state, job))
                if include_usage:
                    yield chunk([], usage=_usage(job))
                break
            else:
                yield f"data: {json.dumps(error_body(ev.status, ev.message, code=str(ev.status)))}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # a client that went away leaves the batch at the next step
