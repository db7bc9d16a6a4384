"""The ``suffix`` drafter's options and their ``KEY=VALUE,...`` spec syntax.

``suffix`` alone takes the defaults; ``suffix:budget=0`` drafts from each request alone;
``suffix:budget=50000,prompts=1,min_prob=0.2`` changes several. The names follow SuffixDecoding
(Oliaro et al., NeurIPS 2025) and Arctic Inference's ``suffix_decoding`` where they have one:
``factor`` / ``offset`` are its ``max_spec_factor`` / ``max_spec_offset`` (a match of ``m``
tokens may speculate at most ``factor * m + offset`` tokens) and ``min_prob`` its
``min_token_prob``. Every option is range-checked here, once, so a bad spec fails at load time.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from specgrove.errors import InvalidRequest

# A run-time LoadDrafter is fileless for ``suffix`` (always allowed), so the memory one drafter
# may hold is capped here rather than by the load policy's allow-list.
MAX_BUDGET = 10_000_000


@dataclass(frozen=True)
class SuffixOptions:
    budget: int = 100_000  # tokens kept in the global structure; 0 = no global structure
    prompts: bool = False  # the global structure keeps prompts too (not only outputs)
    max_match: int = 32  # the longest context suffix compared with earlier text
    # Speculate at most factor * match_len + offset tokens. The paper's factor is 1; replaying
    # the 30 dev prompts (greedy, 96 tokens, tree 16:8; `specgrove replay`) gave tau 1.39 at 1
    # and 1.46 at 2 on a first pass (lookup: 1.47), 2.29 and 2.43 over two passes.
    factor: float = 2.0
    offset: float = 0.0
    min_prob: float = 0.1  # ... each with an estimated probability of at least min_prob
    candidates: int = 64  # earlier occurrences considered per step (the most recent first)

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.budget <= MAX_BUDGET, "budget", f"must be in [0, {MAX_BUDGET}]"),
            (1 <= self.max_match <= 1024, "max_match", "must be in [1, 1024]"),
            (0.0 < self.factor <= 64.0, "factor", "must be in (0, 64]"),
            (0.0 <= self.offset <= 1024.0, "offset", "must be in [0, 1024]"),
            (0.0 < self.min_prob <= 1.0, "min_prob", "must be in (0, 1]"),
            (1 <= self.candidates <= 4096, "candidates", "must be in [1, 4096]"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise InvalidRequest("spec", f"suffix option {name}={getattr(self, name)!r} {why}")

    @staticmethod
    def parse(text: str) -> "SuffixOptions":
        """Options from ``KEY=VALUE[,KEY=VALUE...]`` (the part after ``suffix:``)."""
        types = {f.name: f.type for f in fields(SuffixOptions)}
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in types:
                raise InvalidRequest("spec", f"bad suffix option {item!r}; expected KEY=VALUE with KEY "
                                             f"one of {', '.join(types)}")
            if key in values:
                raise InvalidRequest("spec", f"suffix option {key} given twice")
            values[key] = _convert(key, types[key], raw.strip())
        return SuffixOptions(**values)

    def spec(self) -> str:
        """The spec that builds these options (``suffix:...``; defaults left out)."""
        default = SuffixOptions()
        parts = [f"{f.name}={_format(getattr(self, f.name))}" for f in fields(self)
                 if getattr(self, f.name) != getattr(default, f.name)]
        return "suffix" + (":" + ",".join(parts) if parts else "")


def _convert(key: str, kind: str, raw: str):
    try:
        if kind == "bool":
            if raw not in ("0", "1", "true", "false"):
                raise ValueError(raw)
            return raw in ("1", "true")
        return int(raw) if kind == "int" else float(raw)
    except ValueError:
        raise InvalidRequest("spec", f"suffix option {key}={raw!r} is not a valid {kind}") from None


def _format(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)
