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
    def __init__(self, model_dir: Path) -> None:
        if not (model_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{model_dir} has no tokenizer.json (a fast tokenizer is needed)")
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        cfg_path = model_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template_file = model_dir / "chat_template.jinja"
        self.chat_template = (template_file.read_text() if template_file.is_file()
                              else cfg.get("chat_template"))
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.eos_token_id = self.tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(self.chat_template) if self.chat_template else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        """Render the chat template (with the assistant turn opened) and tokenize it."""
        if self._template is None:
            raise InvalidRequest("messages", "this model has no chat template; use /v1/completions")
        try:
            text = self._template.render(messages=list(messages), add_generation_prompt=True,
                                         bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except jinja2.TemplateError as exc:
            raise InvalidRequest("messages", f"the chat template rejected them: {exc}") from exc
        return self.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


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
