"""What a request asks of sampling (torch-free wire dataclasses, ``from_pb`` / ``to_pb``):
``SamplingParams`` -- temperature, top-k/p, min-p, the seed, logprobs, penalties and bias,
length and stop controls -- and its structured-output ``Grammar``. The target applies them
(``specgrove.sampling``, ``specgrove.logits_processors``, ``specgrove.grammar``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from specgrove.errors import InvalidRequest
from specgrove.pb.v1 import common_pb2


# Temperatures below this decode greedily (as vLLM does): dividing logits by 1e-300 overflows
# to inf and the distribution is a point mass at the argmax anyway.
GREEDY_BELOW = 1e-5
MAX_TOP_LOGPROBS = 20  # alternatives per token a request may ask for (vLLM's default cap)
MAX_LOGIT_BIAS = 1024  # logit_bias entries per request
# Structured output: characters of a grammar (schema text, pattern, or all choices together), and
# choices. Sizes are checked before anything is compiled; compiling is the target's work.
MAX_GRAMMAR_CHARS = 1 << 16
MAX_GRAMMAR_CHOICES = 1024
GRAMMAR_KINDS = ("json_object", "json_schema", "regex", "choice")


@dataclass(frozen=True)
class Grammar:
    """Structured output: the output must be a sentence of this grammar (``specgrove.grammar``
    compiles it in the target and masks every tree node's logits with it).

    ``kind`` is one of ``GRAMMAR_KINDS``: ``json_object`` (any JSON object), ``json_schema``
    (``spec`` is the schema as JSON text), ``regex`` (``spec`` is the pattern the whole output
    matches) or ``choice`` (exactly one of ``choices``). Hashable: the target compiles each
    distinct grammar once.
    """

    kind: str
    spec: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise InvalidRequest("grammar", f"kind {self.kind!r} is not one of {', '.join(GRAMMAR_KINDS)}")
        if self.kind == "choice":
            if not 1 <= len(self.choices) <= MAX_GRAMMAR_CHOICES or self.spec:
                raise InvalidRequest("grammar", f"a choice needs 1 to {MAX_GRAMMAR_CHOICES} strings")
        elif self.choices:
            raise InvalidRequest("grammar", f"a {self.kind} grammar has no choices")
        if self.kind == "json_object" and self.spec:
            raise InvalidRequest("grammar", "a json_object grammar has no spec")
        if self.kind == "json_schema" and not self.spec.strip():
            raise InvalidRequest("grammar", "the JSON schema is empty")
        size = len(self.spec) + sum(len(c) for c in self.choices)
        if size > MAX_GRAMMAR_CHARS:
            raise InvalidRequest("grammar", f"{size} characters exceed the limit of {MAX_GRAMMAR_CHARS}")

    @staticmethod
    def from_pb(msg: common_pb2.Grammar) -> "Grammar | None":
        kind = msg.WhichOneof("kind")
        if kind is None or (kind == "json_object" and not msg.json_object):
            return None
        if kind == "choice":
            return Grammar("choice", choices=tuple(msg.choice.options))
        return Grammar(kind, "" if kind == "json_object" else getattr(msg, kind))

    def to_pb(self) -> common_pb2.Grammar:
        if self.kind == "json_object":
            return common_pb2.Grammar(json_object=True)
        if self.kind == "choice":
            return common_pb2.Grammar(choice=common_pb2.Grammar.Choices(options=self.choices))
        return common_pb2.Grammar(**{self.kind: self.spec})


@dataclass(frozen=True)
class SamplingParams:
    """How the target distribution p is formed; temperature 0 (or < GREEDY_BELOW) is greedy.

    ``seed`` keys the position-keyed sampling noise (``specgrove.sampling``): a request with
    the same seed gives the same tokens whatever the speculation.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    logprobs: int | None = None  # emitted tokens' log-probabilities with this many alternatives
    # Logits processors (``specgrove.logits_processors``), applied at every tree node.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), sorted by id
    stop_token_ids: tuple[int, ...] = ()  # masked with end-of-sequence before min_tokens
    grammar: Grammar | None = None  # structured output (``specgrove.grammar``); None: free text

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise InvalidRequest("temperature", f"must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest("top_p", f"must be in (0, 1], got {self.top_p}")
        if not 0 <= self.top_k < 2**31:
            raise InvalidRequest("top_k", f"must be in [0, 2^31), got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidRequest("seed", f"must be in [0, 2^63), got {self.seed}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest("top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InvalidRequest(name, f"must be in [-2, 2], got {getattr(self, name)}")
        if not 0.0 < self.repetition_penalty <= 100.0:
            raise InvalidRequest("repetition_penalty", f"must be in (0, 100], got {self.repetition_penalty}")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidRequest("min_p", f"must be in [0, 1], got {self.min_p}")
        if not 0 <= self.min_tokens < 2**31:
            raise InvalidRequest("min_tokens", f"must be >= 0, got {self.min_tokens}")
        if len(self.logit_bias) > MAX_LOGIT_BIAS or any(not -100.0 <= b <= 100.0 for _, b in self.logit_bias):
            raise InvalidRequest("logit_bias", f"at most {MAX_LOGIT_BIAS} entries, each in [-100, 100]")
        if self.grammar is not None and self.min_tokens:
            # A complete sentence of the grammar allows only end-of-sequence, which min_tokens
            # forbids: no token would be left to sample.
            raise InvalidRequest("min_tokens", "cannot be combined with a grammar (structured output)")

    @property
    def processes_logits(self) -> bool:
        """Whether any logits processor changes the logits (the common case pays nothing)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.min_tokens or self.logit_bias or self.grammar is not None)

    @property
    def counts_output(self) -> bool:
        """Whether the processors need the tokens generated so far."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def seeded(self) -> "SamplingParams":
        """These params with a seed: their own, or a fresh random 63-bit one."""
        if self.seed is not None:
            return self
        return replace(self, seed=random.SystemRandom().randrange(2**63))

    @staticmethod
    def from_pb(msg: common_pb2.SamplingParams) -> "SamplingParams":
        seed = msg.seed if msg.HasField("seed") else None
        logprobs = msg.logprobs if msg.HasField("logprobs") else None
        repetition = msg.repetition_penalty if msg.HasField("repetition_penalty") else 1.0
        temperature = msg.temperature if msg.HasField("temperature") else SamplingParams.temperature
        top_p = msg.top_p if msg.HasField("top_p") else SamplingParams.top_p
        grammar = Grammar.from_pb(msg.grammar) if msg.HasField("grammar") else None
        return SamplingParams(temperature, top_p, msg.top_k, seed, logprobs,
                              msg.presence_penalty, msg.frequency_penalty, repetition, msg.min_p,
                              msg.min_tokens, tuple(sorted(msg.logit_bias.items())),
                              tuple(msg.stop_token_ids), grammar)

    def to_pb(self) -> common_pb2.SamplingParams:
        return common_pb2.SamplingParams(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed,
            logprobs=self.logprobs, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=None if self.repetition_penalty == 1.0 else self.repetition_penalty,
            min_p=self.min_p, min_tokens=self.min_tokens, logit_bias=dict(self.logit_bias),
            stop_token_ids=self.stop_token_ids,
            grammar=self.grammar.to_pb() if self.grammar is not None else None,
        )
