"""Token log-probabilities in OpenAI's two response shapes.

Chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
"bytes"}]}], "refusal": null}``. Completions (the legacy shape): ``{"tokens",
"token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}``. Tokens are shown as
their own decoded text (``TextCodec.token_text``); the numbers come from the target
(``specgrove.logprobs``).
"""
from __future__ import annotations

from typing import Sequence

from gateway.text import TextCodec
from specgrove.types import TokenLogprob


def chat_logprobs(codec: TextCodec, logprobs: Sequence[TokenLogprob]) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        text = codec.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(lp.token_id, lp.logprob),
                         "top_logprobs": [entry(t, p) for t, p in lp.top]} for lp in logprobs],
            "refusal": None}


def completion_logprobs(codec: TextCodec, logprobs: Sequence[TokenLogprob], offset: int = 0) -> dict:
    """``offset``: where the first token starts in the completion's text (streams continue)."""
    tokens, offsets = [], []
    for lp in logprobs:
        tokens.append(codec.token_text(lp.token_id))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{codec.token_text(t): p for t, p in lp.top} if lp.top else None
                             for lp in logprobs],
            "text_offset": offsets}
