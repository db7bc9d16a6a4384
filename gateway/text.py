"""Tokenization, chat templates and incremental detokenization, without torch or transformers.

The gateway only needs the tokenizer: ``tokenizer.json`` through the ``tokenizers`` library and
the chat template (``chat_template.jinja`` or ``tokenizer_config.json``) rendered with a
sandboxed Jinja2 environment, as Hugging Face tokenizers do.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from specgrove.errors import InvalidRequest


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class TextCodec:
    def __init__(self, model_dir: Path, chat_template: str | None = None) -> None:
        """``chat_template``: Jinja text replacing the tokenizer's own (``--chat-template``)."""
        if not (model_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{model_dir} has no tokenizer.json (a fast tokenizer is needed)")
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        cfg_path = model_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template_file = model_dir / "chat_template.jinja"
        self.chat_template = chat_template or (template_file.read_text() if template_file.is_file()
                                               else cfg.get("chat_template"))
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.eos_token_id = self.tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(self.chat_template) if self.chat_template else None
        self._special_ids: set[int] | None = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_chat(self, messages: Sequence[dict], special_tokens_in_content: bool = False) -> list[int]:
        """Render the chat template (with the assistant turn opened) and tokenize it.

        Special-token strings inside message content (``<|im_start|>`` ...) are tokenized as
        plain text, so user text cannot forge turns or roles; only the template makes control
        tokens. ``special_tokens_in_content=True`` parses them as control tokens (the raw
        behaviour, an explicit opt-in). Content without such strings tokenizes exactly as the
        whole rendered text would.
        """
        if special_tokens_in_content:
            return self.encode(self._render(messages), add_special_tokens=False)
        pieces = self._pieces(messages)  # [(text, is_content)]
        if pieces is None:  # the template transformed the content: tokenize it as rendered
            return self._literal_content_fallback(messages)
        text = "".join(p for p, _ in pieces)
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        spans, at = [], 0
        for piece, is_content in pieces:
            if is_content:
                spans.append((at, at + len(piece)))
            at += len(piece)
        forged = any(self._special(tok) and any(a < end and start < b for a, b in spans)
                     for tok, (start, end) in zip(enc.ids, enc.offsets))
        if not forged:
            return enc.ids
        ids: list[int] = []
        for piece, is_content in pieces:
            ids += self._encode_literal(piece) if is_content else self.encode(piece, add_special_tokens=False)
        return ids

    def _render(self, messages: Sequence[dict]) -> str:
        if self._template is None:
            raise InvalidRequest("messages", "this model has no chat template; use /v1/completions")
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True,
                                         bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except jinja2.TemplateError as exc:
            raise InvalidRequest("messages", f"the chat template rejected them: {exc}") from exc

    def _pieces(self, messages: Sequence[dict]) -> list[tuple[str, bool]] | None:
        """The rendered chat as template text and message contents, in order; None when the
        template does not copy each content verbatim (found through marker strings)."""
        contents = [m.get("content") if isinstance(m, dict) else None for m in messages]
        markers = [f"\ue000specgrove{i}\ue001" for i in range(len(messages))]
        marked = [dict(m, content=markers[i]) if isinstance(contents[i], str) else m
                  for i, m in enumerate(messages)]
        rendered = self._render(marked)
        pieces, at = [], 0
        for i, content in enumerate(contents):
            if not isinstance(content, str):
                continue
            found = rendered.find(markers[i], at)
            if found < 0 or rendered.count(markers[i]) != 1 or any(mk in content for mk in markers):
                return None
            pieces += [(rendered[at:found], False), (content, True)]
            at = found + len(markers[i])
        pieces.append((rendered[at:], False))
        return pieces

    def _literal_content_fallback(self, messages: Sequence[dict]) -> list[int]:
        """A template that rewrites content: render, and refuse special-token strings the user
        sent rather than let them become control tokens."""
        specials = [t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special]
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str) and any(s and s in content for s in specials):
                raise InvalidRequest("messages", "message content contains a special token string "
                                                 "that this model's chat template cannot keep literal")
        return self.encode(self._render(messages), add_special_tokens=False)

    def _special(self, token_id: int) -> bool:
        if self._special_ids is None:
            self._special_ids = {i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}
        return token_id in self._special_ids

    def _encode_literal(self, text: str) -> list[int]:
        """Tokenize with special-token strings as ordinary text."""
        self.tokenizer.encode_special_tokens = True
        try:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        finally:
            self.tokenizer.encode_special_tokens = False

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        """One token as text (special tokens included; a partial UTF-8 sequence shows as U+FFFD)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


def _raise(message: str):
    raise jinja2.TemplateError(message)


class IncrementalDecoder:
    """Turns a growing token list into text deltas, never splitting a multi-byte character.

    Decodes a small window (``prefix`` .. end) and emits what the newest tokens added, holding
    it back while the text ends in a replacement character (an incomplete UTF-8 sequence).
    """

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.tokens: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # tokens up to here are already in the emitted text

    def push(self, new_tokens: Sequence[int]) -> str:
        self.tokens.extend(new_tokens)
        before = self.codec.decode(self.tokens[self.prefix:self.read])
        after = self.codec.decode(self.tokens[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.tokens)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """At the end: whatever is still held back, replacement characters included."""
        before = self.codec.decode(self.tokens[self.prefix:self.read])
        after = self.codec.decode(self.tokens[self.prefix:])
        self.prefix = self.read = len(self.tokens)
        return after[len(before):]


class StopMatcher:
    """Finds stop strings in streamed text and holds back text that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""  # everything generated so far
        self.sent = 0  # characters already released to the client

    def feed(self, delta: str, final: bool) -> tuple[str, bool]:
        """Add ``delta``; return (text safe to send now, whether a stop string was hit)."""
        self.text += delta
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.sent - len(stop) + 1))
            if at >= 0:
                out = self.text[self.sent:at]
                self.sent = at
                return out, True
        end = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        out = self.text[self.sent:end]
        self.sent = end
        return out, False
