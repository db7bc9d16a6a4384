"""OpenAI-compatible request bodies (pydantic) and their translation into a ``JobSpec``.

Every field of OpenAI's and vLLM's request schemas is either honoured or refused: known fields
are type-checked and range-checked, and a field this server does not implement
(``UNSUPPORTED``) gets a 400 naming it unless it holds its neutral value (``logprobs: false``,
``presence_penalty: 0`` ...), so that no client is silently given something other than it asked
for. Unknown non-standard fields are ignored with a logged warning, as vLLM does. Every
violation becomes an HTTP 400 with an OpenAI-style error body naming the parameter. Extra
fields beyond OpenAI's: ``top_k``, ``ignore_eos``, ``stop_token_ids`` and ``speculation``
(``{"drafter": NAME | "none", "tree": "4,2,2,1" | {"nodes": N, "depth": D, "top_k": K},
"coupled": true | false}``). Structured output (``response_format``, ``guided_*``,
``structured_outputs``) is read by ``gateway.structured_output``.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.job import JobSpec
from gateway.structured_output import StructuredOutputFields
from gateway.text import TextCodec
from specgrove.config import parse_tree_option
from specgrove.tree import TreeError, static_tree_size
from specgrove.errors import InvalidRequest
from specgrove.sampling_params import MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS, SamplingParams
from specgrove.types import TargetInfo, TreeBudget


log = logging.getLogger("specgrove.gateway")

INT32_MAX = 2**31 - 1
MAX_TREE_FIELD = 4096
MAX_CHOICES = 16  # n, and prompts per completions request (at most 64 choices in all)

# Known request fields (OpenAI's and vLLM's) that this server does not implement, with the
# values that ask for nothing (clients often send the defaults explicitly). Anything else: 400.
_NONE = (None,)
UNSUPPORTED: dict[str, tuple] = {
    "prompt_logprobs": (None, 0), "guided_grammar": _NONE,
    "tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []),
    "function_call": (None, "none", "auto"), "best_of": (None, 1), "suffix": (None, ""),
    "use_beam_search": (None, False), "length_penalty": (None, 1), "allowed_token_ids": _NONE,
    "bad_words": (None, []), "audio": _NONE, "modalities": (None, ["text"]), "prediction": _NONE,
    "web_search_options": _NONE, "reasoning_effort": _NONE, "truncate_prompt_tokens": _NONE,
    "include_stop_str_in_output": (None, False), "skip_special_tokens": (None, True),
    "add_generation_prompt": (None, True), "continue_final_message": (None, False),
    "chat_template": _NONE, "chat_template_kwargs": (None, {}), "documents": _NONE,
}
# Known fields with no effect on generation here, accepted as they are.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "priority",
           "request_id", "stream_options"}


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
    # Drafters scored on this request's emitted tokens without drafting for it (gateway.shadow).
    shadow: list[str] = Field(default_factory=list, max_length=8)


class StreamOptions(BaseModel):
    include_usage: bool = False


def _same(value, neutral) -> bool:
    """``value`` is ``neutral`` (booleans only match booleans: ``0`` is not ``false``)."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return value is neutral
    return value == neutral


class _Common(StructuredOutputFields):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=INT32_MAX)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    speculation: SpeculationSpec | None = None
    ignore_eos: bool = False  # vLLM's extra: generate up to max_tokens past end-of-sequence
    stop_token_ids: list[int] = Field(default_factory=list, max_length=1024)  # vLLM's extra
    user: str | None = None
    # Logits processors, applied at every tree node (``specgrove.logits_processors``).
    presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(1.0, gt=0.0, le=100.0)  # vLLM's extra
    min_p: float | None = Field(0.0, ge=0.0, le=1.0)  # vLLM's extra
    min_tokens: int | None = Field(0, ge=0, le=INT32_MAX)  # vLLM's extra
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS)

    def logit_bias_pairs(self, vocab_size: int) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as sorted (token id, bias) pairs, checked against the vocabulary."""
        pairs = []
        for key, bias in (self.logit_bias or {}).items():
            if not key.strip().isdigit() or not 0 <= int(key) < vocab_size:
                raise InvalidRequest("logit_bias", f"{key!r} is not a token id of this model "
                                                   f"(0 .. {vocab_size - 1})")
            if not -100.0 <= bias <= 100.0:
                raise InvalidRequest("logit_bias", f"bias {bias} for token {key} is outside [-100, 100]")
            pairs.append((int(key), float(bias)))
        return tuple(sorted(pairs))

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        """400 for a known field this server does not implement, unless it asks for nothing;
        a warning for fields nobody knows."""
        unknown = []
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED:
                if not any(_same(value, neutral) for neutral in UNSUPPORTED[name]):
                    raise InvalidRequest(name, f"{name!r} is not supported by this server (send it "
                                               f"unset or with its default value); see the README's "
                                               f"field table")
            elif name not in IGNORED:
                unknown.append(name)
        if unknown:
            log.warning("ignoring unknown request fields: %s", ", ".join(sorted(unknown)[:20]))
        return self


class CompletionRequest(_Common):
    # One prompt: a string, or token ids (a list of one of either is accepted too).
    prompt: Union[str, list[int], list[str], list[list[int]]]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # alternatives per token
    echo: bool = False  # the prompt's text before the completion's

    @model_validator(mode="after")
    def _echo_without_logprobs(self):
        if self.echo and self.logprobs is not None:
            raise InvalidRequest("echo", "echo with logprobs would need the prompt's log-probabilities, "
                                         "which this server does not compute")
        return self

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def echoed(self, codec: TextCodec) -> list[str]:
        """Each prompt's text as echoed (token-id prompts decoded); "" per prompt without echo."""
        prompt = self.prompt
        many = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
        if not self.echo:
            return [""] * len(many)
        return [codec.decode(p) if isinstance(p, list) else p for p in many]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    # A string, or content parts of which only text parts are supported (joined by newlines).
    content: Union[str, list[dict[str, Any]]]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        texts = []
        for i, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type")
                raise InvalidRequest(f"content.{i}.type", f"only text content parts are supported, got {kind!r}")
            texts.append(part["text"])
        return "\n".join(texts)

    def for_template(self) -> dict:
        out = {"role": self.role, "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        return out


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    # Off: "<|im_start|>" in a message is text, never a control token (no forged turns).
    special_tokens_in_content: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Literal[False] = False  # vLLM's chat echo (of the last message) is not implemented

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs", "needs logprobs: true")
        return self

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def invalid(exc: ValidationError) -> InvalidRequest:
    """The first validation error, naming its field (``messages.0.role``, ``top_p``, ...)."""
    first = exc.errors()[0]
    raised = first.get("ctx", {}).get("error")
    if isinstance(raised, InvalidRequest):  # from a model validator, naming its own field
        return raised
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return InvalidRequest(where, first["msg"])


def speculation_of(spec: SpeculationSpec | None, default: TreeBudget, drafters: set[str]) -> tuple[str, TreeBudget]:
    """(drafter name, budget) a request asks for; ("none", off) when speculation is off."""
    if spec is None:
        return "", default
    if spec.drafter == "none":
        return "none", TreeBudget.off()
    if spec.drafter and spec.drafter not in drafters:
        raise InvalidRequest("speculation.drafter",
                             f"unknown drafter {spec.drafter!r}; loaded: {sorted(drafters)}")
    return spec.drafter or "", tree_of(spec, default)


def shadows_of(spec: SpeculationSpec | None, default: TreeBudget, drafters: set[str]) -> tuple[tuple[str, ...], TreeBudget]:
    """The shadow drafters a request names and the tree they draft within (its ``tree``, else
    the default one), whether or not the request itself speculates."""
    if spec is None or not spec.shadow:
        return (), tree_of(spec, default) if spec is not None else default
    for i, name in enumerate(spec.shadow):
        if name not in drafters:
            raise InvalidRequest(f"speculation.shadow.{i}", f"unknown drafter {name!r}; loaded: {sorted(drafters)}")
    return tuple(dict.fromkeys(spec.shadow)), tree_of(spec, default)


def tree_of(spec: SpeculationSpec, default: TreeBudget) -> TreeBudget:
    """The request's ``tree`` (either syntax), else ``default``."""
    budget = default
    if isinstance(spec.tree, str):  # one syntax everywhere: "4,2,2,1" static, "N:D[:K]" dynamic
        try:
            budget = parse_tree_option(spec.tree)
        except (TreeError, InvalidRequest) as exc:
            raise InvalidRequest("speculation.tree", getattr(exc, "reason", str(exc))) from exc
        if not budget.is_static:  # the bounds of the object form, TreeSpec
            try:
                TreeSpec(nodes=budget.max_nodes, depth=budget.max_depth, top_k=budget.top_k)
            except ValidationError as exc:
                raise InvalidRequest("speculation.tree", f"{invalid(exc)}") from exc
    elif isinstance(spec.tree, TreeSpec):
        budget = TreeBudget(max_nodes=spec.tree.nodes, max_depth=spec.tree.depth, top_k=spec.tree.top_k)
    return budget


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
    shadow, shadow_budget = shadows_of(req.speculation, default_budget, drafters)
    for b in (budget, shadow_budget):
        if b.is_static and static_tree_size(b.branching) > info.max_tree_nodes:
            raise InvalidRequest("speculation.tree", f"{static_tree_size(b.branching)} nodes "
                                                     f"exceed the target's limit of {info.max_tree_nodes}")
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    min_tokens = req.min_tokens or 0
    if min_tokens > max_tokens:
        raise InvalidRequest("min_tokens", f"{min_tokens} is more than max_tokens {max_tokens}")
    grammar = req.grammar()
    if grammar is not None and req.ignore_eos:
        raise InvalidRequest("ignore_eos", "cannot be combined with structured output: the grammar "
                                           "ends the output with end-of-sequence")
    sampling = SamplingParams(
        req.temperature, req.top_p, max(req.top_k, 0), req.seed, req.top_logprobs_wanted,
        presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        min_p=req.min_p or 0.0, min_tokens=min_tokens, logit_bias=req.logit_bias_pairs(info.vocab_size),
        stop_token_ids=tuple(sorted(set(req.stop_token_ids))), grammar=grammar)
    coupled = req.speculation.coupled if req.speculation is not None else True
    bad = next((t for t in req.stop_token_ids if not 0 <= t < info.vocab_size), None)
    if bad is not None:
        raise InvalidRequest("stop_token_ids", f"token {bad} is outside the vocabulary of {info.vocab_size}")
    return JobSpec(tuple(prompt_ids), max_tokens, sampling, stops, drafter, budget,
                   adaptive=req.speculation is None, coupled=coupled, ignore_eos=req.ignore_eos,
                   stop_token_ids=frozenset(req.stop_token_ids), shadow=shadow, shadow_budget=shadow_budget)


def prompts_of(req: CompletionRequest | ChatRequest, codec: TextCodec, vocab_size: int) -> list[list[int]]:
    """The request's prompts as token ids: one for a chat, one or more for completions (a
    string, token ids, or a list of either)."""
    if isinstance(req, ChatRequest):
        messages = []
        for i, m in enumerate(req.messages):
            try:
                messages.append(m.for_template())
            except InvalidRequest as exc:
                raise InvalidRequest(f"messages.{i}.{exc.field}", exc.reason) from exc
        return [codec.encode_chat(messages, req.special_tokens_in_content)]
    prompt = req.prompt
    many = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    if len(many) > MAX_CHOICES or len(many) * req.n > 4 * MAX_CHOICES:
        raise InvalidRequest("prompt", f"{len(many)} prompts x n={req.n}: at most {MAX_CHOICES} prompts "
                                       f"and {4 * MAX_CHOICES} choices per request")
    out = []
    for one in many:
        if isinstance(one, list):  # token ids
            bad = next((t for t in one if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise InvalidRequest("prompt", f"token {bad} is outside the vocabulary of {vocab_size}")
            out.append(list(one))
        else:
            out.append(codec.encode(one) if one else [])
    return out


def choice_spec(spec: JobSpec, index: int) -> JobSpec:
    """The job of a prompt's choice ``index``: choice 0 samples under the request's seed, the
    others under seeds derived from it (the same seed would give the same sample), so a seeded
    request with n > 1 is reproducible choice by choice."""
    if index == 0 or spec.sampling.seed is None:
        return spec
    derived = (spec.sampling.seed * 0x9E3779B97F4A7C15 + index) % (2**63)
    return replace(spec, sampling=replace(spec.sampling, seed=derived))


class TokenizeRequest(BaseModel):
    """vLLM's ``POST /tokenize``: a prompt, or chat messages through the chat template."""

    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True  # prompts only
    add_generation_prompt: bool = True  # messages only: the template always opens the reply
    return_token_strs: bool = False

    def token_ids(self, codec: TextCodec) -> list[int]:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequest("prompt", "send exactly one of prompt or messages")
        if self.prompt is not None:
            return codec.encode(self.prompt, add_special_tokens=self.add_special_tokens)
        if not self.add_generation_prompt:
            raise InvalidRequest("add_generation_prompt", "only true is supported")
        return codec.encode_chat([m.for_template() for m in self.messages])


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    tokens: list[int] = Field(max_length=1 << 20)

