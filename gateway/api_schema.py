"""OpenAI-compatible request bodies (pydantic) and their translation into a ``JobSpec``.

Unknown fields are ignored, as OpenAI-compatible servers do; known fields are type-checked and
range-checked, and every violation becomes an HTTP 400 with an OpenAI-style error body naming
the parameter. Extra fields beyond OpenAI's: ``top_k``, ``ignore_eos`` and ``speculation``
(``{"drafter": NAME | "none", "tree": "4,2,2,1" | {"nodes": N, "depth": D, "top_k": K},
"coupled": true | false}``).
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.job import JobSpec
from gateway.text import TextCodec
from specgrove.tree import TreeError, parse_branching, static_tree_size
from specgrove.errors import InvalidRequest
from specgrove.types import SamplingParams, TargetInfo, TreeBudget


INT32_MAX = 2**31 - 1
MAX_TREE_FIELD = 4096


class TreeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Bounded by what one tree may hold (the target refuses more than its node limit anyway):
    # values past int32 would not even fit the wire.
    nodes: int = Field(8, ge=1, le=MAX_TREE_FIELD)
    depth: int = Field(4, ge=0, le=MAX_TREE_FIELD)
    top_k: int = Field(4, ge=1, le=MAX_TREE_FIELD)


class SpeculationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drafter: str | None = None
    tree: Union[str, TreeSpec, None] = None
    coupled: bool = True  # model drafts ranked by the request's sampling noise


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=INT32_MAX)
    n: int = Field(1, ge=1, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    speculation: SpeculationSpec | None = None
    ignore_eos: bool = False  # vLLM's extra: generate up to max_tokens past end-of-sequence
    user: str | None = None


class CompletionRequest(_Common):
    prompt: Union[str, list[str]]
    echo: Literal[False] = False
    logprobs: None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    # Off: "<|im_start|>" in a message is text, never a control token (no forged turns).
    special_tokens_in_content: bool = False


def invalid(exc: ValidationError) -> InvalidRequest:
    """The first validation error, naming its field (``messages.0.role``, ``top_p``, ...)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return InvalidRequest(where, first["msg"])


def speculation_of(spec: SpeculationSpec | None, default: TreeBudget, drafters: set[str]) -> tuple[str, TreeBudget]:
    """(drafter name, budget) a request asks for; ("", off) when speculation is off."""
    if spec is None:
        return "", default
    if spec.drafter == "none":
        return "none", TreeBudget.off()
    if spec.drafter and spec.drafter not in drafters:
        raise InvalidRequest("speculation.drafter",
                             f"unknown drafter {spec.drafter!r}; loaded: {sorted(drafters)}")
    budget = default
    if isinstance(spec.tree, str):
        try:
            budget = TreeBudget(branching=parse_branching(spec.tree))
        except TreeError as exc:
            raise InvalidRequest("speculation.tree", str(exc)) from exc
    elif isinstance(spec.tree, TreeSpec):
        budget = TreeBudget(max_nodes=spec.tree.nodes, max_depth=spec.tree.depth, top_k=spec.tree.top_k)
    return spec.drafter or "", budget


def job_spec(req: _Common, prompt_ids: list[int], info: TargetInfo, default_budget: TreeBudget,
             drafters: set[str], default_max_tokens: int | None) -> JobSpec:
    """Check a request against the served model and turn it into what the step loop runs."""
    if not prompt_ids:
        raise InvalidRequest("prompt", "the prompt is empty")
    room = info.max_model_len - len(prompt_ids)
    if room < 1:
        raise InvalidRequest("prompt", f"{len(prompt_ids)} prompt tokens leave no room in the "
                                       f"context of {info.max_model_len} tokens")
    max_tokens = req.max_tokens if req.max_tokens is not None else (default_max_tokens or room)
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        max_tokens = req.max_completion_tokens
    if max_tokens < 1:
        raise InvalidRequest("max_tokens", f"must be >= 1, got {max_tokens}")
    if max_tokens > room:
        raise InvalidRequest("max_tokens", f"{max_tokens} new tokens after {len(prompt_ids)} prompt "
                                           f"tokens exceed the context of {info.max_model_len}")
    drafter, budget = speculation_of(req.speculation, default_budget, drafters)
    if budget.is_static and static_tree_size(budget.branching) > info.max_tree_nodes:
        raise InvalidRequest("speculation.tree", f"{static_tree_size(budget.branching)} nodes "
                                                 f"exceed the target's limit of {info.max_tree_nodes}")
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    sampling = SamplingParams(req.temperature, req.top_p, max(req.top_k, 0), req.seed)
    coupled = req.speculation.coupled if req.speculation is not None else True
    return JobSpec(tuple(prompt_ids), max_tokens, sampling, stops, drafter, budget,
                   adaptive=req.speculation is None, coupled=coupled, ignore_eos=req.ignore_eos)


def prompt_ids_of(req: CompletionRequest | ChatRequest, codec: TextCodec) -> list[int]:
    if isinstance(req, ChatRequest):
        return codec.encode_chat([m.model_dump() for m in req.messages], req.special_tokens_in_content)
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest("prompt", "exactly one prompt per request is supported")
        prompt = prompt[0]
    return codec.encode(prompt) if prompt else []
