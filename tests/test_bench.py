"""``specgrove bench --start`` on a tiny model: results.json, report.md and the plots, one row
per setting and concurrency, and greedy text that does not depend on the setting."""
from __future__ import annotations

import json
import subprocess
import sys


def test_bench_start_writes_the_report(tiny_dirs, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"q{i}", "category": c, "prompt": p}) for i, (c, p) in enumerate(
        [("chat", "the quick brown fox"), ("code", "def add(a, b):"), ("chat", "a b a b a b")])) + "\n")
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "specgrove.cli", "bench", "--start", "--prompts", str(prompts),
           "--up-arg=--target", f"--up-arg={tiny_dirs['llama']}", "--up-arg=--drafter", "--up-arg=lookup=ngram",
           "--up-arg=--kv-blocks", "--up-arg=256",
           "--setting", 'off={"drafter": "none"}', "--setting", 'chain={"drafter": "lookup", "tree": "1,1,1"}',
           "--setting", "dflt=default", "--concurrency", "1,2", "--repeats", "2", "--max-tokens", "12",
           "--peer", "hf", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = results["summary"]["rows"]
    assert sorted((r["setting"], r["concurrency"]) for r in rows) == sorted(
        [(s, c) for s in ("off", "chain", "dflt") for c in (1, 2)] + [("peer:hf", 1)])
    peer = next(r for r in rows if r["setting"] == "peer:hf")
    assert peer["tokens_per_s"] > 0 and peer["speedup"] is not None
    assert all(r["repeats"] == 2 for r in rows)
    off1 = next(r for r in rows if r["setting"] == "off" and r["concurrency"] == 1)
    chain1 = next(r for r in rows if r["setting"] == "chain" and r["concurrency"] == 1)
    assert off1["speedup"] == 1.0 and off1["tau"] == 1.0 and chain1["drafted_tokens"] > 0
    texts = {}
    for run in results["runs"]:  # greedy: every setting gives the same text for a prompt
        if run["setting"].startswith("peer:"):
            continue  # another engine: equal up to rounding only
        for q in run["requests"]:
            texts.setdefault(q["prompt_id"], set()).add(q["text"])
    assert all(len(t) == 1 for t in texts.values())
    report = (out / "report.md").read_text()
    assert "| chain | 2 |" in report and "Per category" in report
    for png in ("speedup_vs_concurrency.png", "acceptance_per_position.png", "tau_per_category.png"):
        assert (out / png).stat().st_size > 1000


def test_llama_cpp_peer_is_refused_before_any_run_without_llama_cpp_python(tmp_path, monkeypatch):
    import importlib.util

    import pytest

    from specgrove.cli.bench_peers import check_peers, gguf_of

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(ValueError, match="pip install llama-cpp-python"):
        check_peers(("hf", "llama.cpp"))
    check_peers(("hf", "hf-assisted"))  # the others need nothing more
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert gguf_of(str(gguf)) == str(gguf)
    with pytest.raises(ValueError, match="needs a GGUF model"):
        gguf_of(str(tmp_path))
