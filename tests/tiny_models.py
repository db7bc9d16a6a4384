"""Tiny random-weight checkpoints saved with ``save_pretrained`` so the real loaders run."""
from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 320

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _config(kind: str, seed_layers: int = 2, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=seed_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    common.update(overrides)
    if kind == "llama":
        return LlamaConfig(tie_word_embeddings=True, **common)
    if kind == "llama3":
        return LlamaConfig(
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64},
            **common,
        )
    if kind == "qwen2":
        return Qwen2Config(tie_word_embeddings=False, **common)
    if kind == "mistral":
        return MistralConfig(tie_word_embeddings=False, sliding_window=None, **common)
    raise ValueError(kind)


def make_tokenizer():
    """A byte-level BPE tokenizer with a chat template, trained on a tiny corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 8, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the quick brown fox jumps over the lazy dog " * 4, "hello world, speculative decoding"]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_model(
    path: Path, kind: str = "llama", seed: int = 0, with_tokenizer: bool = True, **overrides
) -> Path:
    """Random weights (fixed seed), saved in float32, with a tokenizer unless told not to."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(kind, **overrides), dtype=torch.float32)
    with torch.no_grad():  # larger weights than the default init give peakier, less tied logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(path)
    if with_tokenizer:
        make_tokenizer().save_pretrained(path)
    return path
