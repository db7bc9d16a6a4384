"""``specgrove generate`` end to end, and its one-line errors for bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from transformers import GPT2Config, GPT2LMHeadModel

from specgrove.cli import main
from tests.tiny_models import save_tiny_model


def _run(*args: str):
    result = CliRunner().invoke(main, ["generate", *args])
    return result.exit_code, result.output, result.stderr


def _json(*args: str) -> dict:
    code, out, err = _run(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_generate_json_plain_vs_speculative(tiny_dirs):
    common = ["--target", str(tiny_dirs["llama"]), "--prompt", "the quick brown fox",
              "--max-tokens", "24", "--dtype", "float64"]
    plain = _json(*common, "--drafter", "none")
    assert plain["steps"] == len(plain["token_ids"]) - 1 and plain["drafted_tokens"] == 0
    assert set(plain) >= {"token_ids", "text", "steps", "drafted_tokens", "accepted_tokens",
                          "mean_acceptance_length", "tokens_per_second"}
    for extra in (["--drafter", "ngram"], ["--drafter", f"model:{tiny_dirs['draft']}", "--tree", "3,2"],
                  ["--drafter", f"small=model:{tiny_dirs['draft']}", "--tree", "8:3"]):
        spec = _json(*common, *extra)
        assert spec["token_ids"] == plain["token_ids"]
        assert spec["text"] == plain["text"]


def test_chat_and_sampling_options(tiny_dirs):
    args = ["--target", str(tiny_dirs["qwen2"]), "--prompt", "hello", "--chat",
            "--max-tokens", "8", "--temperature", "0.9", "--top-p", "0.9", "--top-k", "20",
            "--seed", "3"]
    first, second = _json(*args), _json(*args)
    assert first["token_ids"] == second["token_ids"] and first["prompt_tokens"] > 3


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--target", "no-such-model"], "unknown model 'no-such-model'"),
        (["--prompt-file-len", "600"], "do not fit the context"),
        (["--temperature", "-1"], "temperature"),
        (["--top-p", "1.5"], "top_p"),
        (["--max-tokens", "0"], "max_tokens"),
        (["--tree", "2,x"], "bad tree shape"),
        (["--drafter", "model"], "needs a path"),
        (["--drafter", "wizard"], "unknown drafter kind"),
        (["--tree", "8:x"], "NODES:DEPTH"),
    ],
)
def test_bad_input_gives_one_line_error(tiny_dirs, args, needle):
    base = {"--target": str(tiny_dirs["llama"]), "--prompt": "hi"}
    if args[0] == "--prompt-file-len":
        base["--prompt"] = "fox " * int(args[1])
        args = []
    merged = [x for kv in base.items() for x in kv if kv[0] not in args] + args
    code, _, err = _run(*merged)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_unsupported_architecture_and_vocab_mismatch(tiny_dirs, tmp_path):
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320)).save_pretrained(gpt2)
    code, _, err = _run("--target", str(gpt2), "--prompt", "hi")
    assert code != 0 and "unsupported architecture 'gpt2'" in err and len(err.strip().splitlines()) == 1
    other = save_tiny_model(tmp_path / "v400", "llama", vocab_size=400)
    code, _, err = _run("--target", str(tiny_dirs["llama"]), "--drafter", f"model:{other}", "--prompt", "hi")
    assert code != 0 and "vocabulary of 400 tokens but the target has 320" in err


def test_console_script_runs(tiny_dirs):
    exe = os.path.join(os.path.dirname(sys.executable), "specgrove")
    out = subprocess.run(
        [exe, "generate", "--target", str(tiny_dirs["llama"]), "--prompt", "fox", "--max-tokens",
         "5", "--json"], capture_output=True, text=True, timeout=300, check=True,
    )
    assert len(json.loads(out.stdout)["token_ids"]) == 5


def test_one_drafter_syntax():
    from specgrove.config import parse_drafter_option

    assert parse_drafter_option("ngram") == ("ngram", "ngram")
    assert parse_drafter_option("lookup=ngram:4") == ("lookup", "ngram:4")
    # options with "=" are part of the spec, not a name
    assert parse_drafter_option("suffix:factor=2,prompts=1") == ("suffix", "suffix:factor=2,prompts=1")
    assert parse_drafter_option("sfx=suffix:budget=0") == ("sfx", "suffix:budget=0")
    with pytest.raises(ValueError):
        parse_drafter_option("=ngram")
