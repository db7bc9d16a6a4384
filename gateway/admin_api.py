"""REST drafter admin: ``GET /v1/drafters``, ``POST /v1/drafters`` (``{"name", "spec",
"make_default"}``), ``POST /v1/drafters/{name}/clear`` and ``DELETE /v1/drafters/{name}``, the
REST side of the gRPC ``ListDrafters`` / ``LoadDrafter`` / ``ClearDrafter`` / ``UnloadDrafter``.

They go to the draft service through the ``DraftPort`` and the gateway re-reads the drafter
list after every change, so a drafter loaded here, over gRPC or on the draft service directly
is usable at once. Loading and unloading need the admin key when one is set (``Guard`` in
``http_api``); listing needs an API key.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.http_errors import error
from gateway.state import GatewayState
from specgrove.errors import InvalidRequest, ServiceError
from specgrove.types import DrafterInfo

# The HTTP status each service error gives an admin call.
_STATUS = {"INVALID_ARGUMENT": 400, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
           "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "UNAUTHENTICATED": 503}


class LoadDrafterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    spec: str = Field(min_length=1, max_length=4096)
    make_default: bool = False


def drafter_json(d: DrafterInfo) -> dict:
    return {"object": "drafter", "name": d.name, "kind": d.kind, "spec": d.spec,
            "is_default": d.is_default, "feature_layers": list(d.feature_layers), "stats": dict(d.stats)}


def add_admin_routes(app: FastAPI, state: GatewayState, parse) -> None:
    """``parse(request, model_cls)``: the gateway's body parser (size limit, OpenAI errors)."""

    async def call(coro):
        try:
            return await coro, None
        except ServiceError as exc:
            field = exc.field if isinstance(exc, InvalidRequest) else None
            return None, error(_STATUS.get(exc.code, 500), str(exc), field)

    @app.get("/v1/drafters")
    async def list_drafters():
        infos, failed = await call(state.draft.list_drafters())
        if failed is not None:
            return failed
        return {"object": "list", "data": [drafter_json(d) for d in infos]}

    @app.post("/v1/drafters")
    async def load_drafter(request: Request):
        try:
            body = await parse(request, LoadDrafterBody)
        except InvalidRequest as exc:
            return error(400, str(exc), exc.field)
        info, failed = await call(state.draft.load_drafter(body.name, body.spec, body.make_default))
        await state.refresh_drafters()
        return failed if failed is not None else drafter_json(info)

    @app.post("/v1/drafters/{name}/clear")
    async def clear_drafter(name: str):
        info, failed = await call(state.draft.clear_drafter(name))
        await state.refresh_drafters()
        return failed if failed is not None else drafter_json(info)

    @app.delete("/v1/drafters/{name}")
    async def unload_drafter(name: str):
        _, failed = await call(state.draft.unload_drafter(name))
        await state.refresh_drafters()
        return failed if failed is not None else {"object": "drafter.deleted", "name": name, "deleted": True}
