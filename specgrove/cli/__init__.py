"""The ``specgrove`` command line: the one composition root.

``specgrove.cli`` is the only part of the shared package that imports the service packages
(``gateway``, ``target_service``, ``draft_service``), and only inside command bodies: importing
it, ``specgrove gateway``, ``specgrove up`` and ``specgrove trace`` load no torch.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from specgrove.cli import serve_cmds


@click.group()
@click.version_option(package_name="specgrove")
def main() -> None:
    """specgrove: speculative and tree decoding."""


@main.command()
@click.option("--target", default="smollm2-135m-instruct", show_default=True,
              help="Model name or path (Hugging Face directory or .gguf file).")
@click.option("--drafter", default=None, metavar="[NAME=]KIND[:SPEC]",
              help="The drafter, as on `draft` and `up`: ngram, ngram:4, suffix, model:PATH, "
                   "eagle:PATH|NAME, or none [eagle:TARGET when a head ships for the target, else ngram].")
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the tokenizer's chat template.")
@click.option("--max-tokens", default=128, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float)
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--top-k", default=0, show_default=True, type=int)
@click.option("--seed", default=None, type=int)
@click.option("--tree", default="8:4", show_default=True,
              help="The tree, as everywhere: NODES:DEPTH[:TOP_K] (dynamic) or a static shape 4,2,2,1.")
@serve_cmds.precision_options
@click.option("--device", default="auto", show_default=True)
@click.option("--kernels", "kernel_backend", default="auto", show_default=True,
              type=click.Choice(["auto", "torch", "triton", "cpu"]))
@click.option("--block-size", default=16, show_default=True, type=int)
@click.option("--kv-blocks", default=1024, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def generate(**opts) -> None:
    """Generate text in this process with speculative decoding."""
    from specgrove.cli.generate_cmd import GenerateOptions, run_generate

    try:
        result = run_generate(GenerateOptions(**opts))
    except Exception as exc:  # noqa: BLE001 -- one clear line, never a traceback
        _fail(exc)
    if opts["as_json"]:
        click.echo(json.dumps(result))
    else:
        click.echo(result["text"])
        click.echo(
            f"[{len(result['token_ids'])} tokens, {result['steps']} steps, "
            f"tau={result['mean_acceptance_length']:.2f}, {result['tokens_per_second']:.1f} tok/s]",
            err=True,
        )


@main.command()
@click.option("--target", default="smollm2-135m-instruct", show_default=True,
              help="Model name or path (Hugging Face directory or .gguf file).")
@click.option("--port", default=50051, show_default=True, type=int)
@click.option("--max-num-seqs", default=256, show_default=True, type=int)
@click.option("--max-tree-nodes", default=64, show_default=True, type=int)
@click.option("--max-model-len", default=None, type=int, help="Cap the context [model's].")
@click.option("--tp", default=1, show_default=True, type=int,
              help="Tensor-parallel ranks; this process is rank 0 and starts the others "
                   "(under torchrun: WORLD_SIZE ranks, each running this command).")
@serve_cmds.model_options
@serve_cmds.service_token_option
@serve_cmds.tls_options
@serve_cmds.tracing_options
def target(**opts) -> None:
    """Run the target service (gRPC): prefill, batched tree verification, release."""
    _serve(serve_cmds.run_target, opts)


@main.command()
@click.option("--target-vocab-from", default="smollm2-135m-instruct", show_default=True,
              help="The target model whose vocabulary every drafter must share.")
@click.option("--drafter", "drafters", multiple=True, metavar="NAME=KIND[:SPEC]",
              help="A drafter to load, e.g. lookup=ngram or small=model:/path (repeatable) "
                   "[lookup=ngram].")
@click.option("--default", default="", help="The default drafter [the first one].")
@click.option("--allow-drafter", "allow_drafters", multiple=True, metavar="NAME|PATH",
              help="A model or head name, file or directory that LoadDrafter may load at run time "
                   "(repeatable; a directory allows everything under it) [start-up drafters and "
                   "shipped heads only].")
@click.option("--max-drafters", default=8, show_default=True, type=int,
              help="Drafters loaded at once; LoadDrafter beyond it is refused.")
@click.option("--port", default=50052, show_default=True, type=int)
@serve_cmds.model_options
@serve_cmds.service_token_option
@serve_cmds.tls_options
@serve_cmds.tracing_options
def draft(**opts) -> None:
    """Run the draft service (gRPC): a hot-swappable registry of drafters."""
    _serve(serve_cmds.run_draft, opts)


@main.command()
@click.option("--target", default="127.0.0.1:50051", show_default=True, help="Target service HOST:PORT.")
@click.option("--draft", default="127.0.0.1:50052", show_default=True, help="Draft service HOST:PORT.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int, help="REST (OpenAI) port.")
@click.option("--grpc-port", default=50050, show_default=True, type=int, help="gRPC Gateway port.")
@click.option("--tokenizer", default=None, help="Tokenizer directory [the target's model].")
@click.option("--api-key", "api_keys", multiple=True, envvar="SPECGROVE_API_KEYS", show_envvar=True,
              help="Require this Bearer key on REST and gRPC (repeatable; the variable holds "
                   "keys separated by spaces).")
@click.option("--admin-key", "admin_keys", multiple=True, envvar="SPECGROVE_ADMIN_KEYS", show_envvar=True,
              help="Require this key to load / unload drafters (repeatable) [any API key].")
@serve_cmds.service_token_option
@serve_cmds.tls_options
@click.option("--max-batch", default=32, show_default=True, type=int, help="Sequences per step.")
@click.option("--max-waiting", default=256, show_default=True, type=int, help="Queue before 429.")
@click.option("--max-requests-per-second", default=0, show_default=True, type=int,
              help="Admission rate limit; excess requests wait (0 = none).")
@click.option("--adaptive-speculation/--no-adaptive-speculation", default=True, show_default=True,
              help="Skip the default speculation in steps where measured costs say it loses.")
@click.option("--default-tree", default="8:4", show_default=True,
              help="Default speculation: NODES:DEPTH[:TOP_K] (dynamic) or a static shape 4,2,2,1.")
@click.option("--drain-timeout", "grace_s", default=30.0, show_default=True, type=float,
              help="On SIGTERM: seconds to let in-flight requests finish.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--chat-template", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A Jinja chat template file [the tokenizer's].")
@serve_cmds.served_model_name_option
@serve_cmds.operator_log_options
@serve_cmds.tracing_options
def gateway(**opts) -> None:
    """Run the gateway: OpenAI REST + SSE and gRPC streaming over the draft/target services."""
    opts["api_keys"], opts["admin_keys"] = tuple(opts["api_keys"]), tuple(opts["admin_keys"])
    _serve(serve_cmds.run_gateway, opts)


@main.command()
@click.option("--target", default="smollm2-135m-instruct", show_default=True,
              help="Model name or path (Hugging Face directory or .gguf file).")
@click.option("--drafter", "drafters", multiple=True, metavar="NAME=KIND[:SPEC]",
              help="Drafters to load (repeatable) [lookup=ngram].")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int, help="REST (OpenAI) port.")
@click.option("--grpc-port", default=50050, show_default=True, type=int)
@click.option("--target-port", default=50051, show_default=True, type=int)
@click.option("--draft-port", default=50052, show_default=True, type=int)
@serve_cmds.precision_options
@click.option("--kv-blocks", default=2048, show_default=True, type=int)
@click.option("--default-tree", default="8:4", show_default=True)
@click.option("--tp", default=1, show_default=True, type=int, help="Tensor-parallel target ranks.")
@click.option("--trace-file", default=None, metavar="PATH",
              help="All three services append trace spans to PATH (see `specgrove trace`).")
@click.option("--otlp-endpoint", default=None, metavar="URL",
              help="All three services send trace spans to this OTLP collector.")
@click.option("--api-key", "api_keys", multiple=True, envvar="SPECGROVE_API_KEYS", show_envvar=True,
              help="Require this Bearer key on REST and gRPC (repeatable).")
@click.option("--admin-key", "admin_keys", multiple=True, envvar="SPECGROVE_ADMIN_KEYS", show_envvar=True,
              help="Require this key to load / unload drafters (repeatable) [any API key].")
@click.option("--drain-timeout", "drain_timeout_s", default=30.0, show_default=True, type=float,
              help="On SIGTERM: seconds the gateway lets in-flight requests finish before the "
                   "services stop.")
@click.option("--allow-drafter", "allow_drafters", multiple=True, metavar="NAME|PATH",
              help="A model / head name or path LoadDrafter may load at run time (repeatable).")
@serve_cmds.tls_options
@serve_cmds.served_model_name_option
@serve_cmds.operator_log_options
@click.option("--tls-generate", is_flag=True,
              help="Mutual TLS between all three with a throwaway CA and certificates made at "
                   "start-up in a private temporary directory (printed; removed on exit).")
@click.option("--max-num-seqs", default=256, show_default=True, type=int, help="Target: sequences held at once.")
@click.option("--max-tree-nodes", default=64, show_default=True, type=int, help="Target: nodes per tree.")
@click.option("--max-model-len", default=None, type=int, help="Target: cap the context [model's].")
@click.option("--device", default="auto", show_default=True, help="Target and draft device.")
@click.option("--kernels", "kernel_backend", default="auto", show_default=True,
              type=click.Choice(["auto", "torch", "triton", "cpu"]))
@click.option("--default-drafter", default="", help="The draft service's default drafter [the first --drafter].")
@click.option("--max-batch", default=32, show_default=True, type=int, help="Gateway: sequences per step.")
@click.option("--max-waiting", default=256, show_default=True, type=int, help="Gateway: queue before 429.")
@click.option("--max-requests-per-second", default=0, show_default=True, type=int,
              help="Gateway: admission rate limit (0 = none).")
@click.option("--adaptive-speculation/--no-adaptive-speculation", default=True, show_default=True,
              help="Gateway: skip the default speculation in steps where it would lose.")
@click.option("--chat-template", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Gateway: a Jinja chat template file [the tokenizer's].")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--speculative-config", default=None, metavar="JSON",
              help="vLLM's form, e.g. '{\"method\": \"ngram\", \"num_speculative_tokens\": 4}': "
                   "that drafter as the default, with a chain of K as the default tree.")
def up(**opts) -> None:
    """Start target, draft and gateway together and keep them running (a service that dies is
    restarted); Ctrl-C / SIGTERM drains and stops all three."""
    from specgrove.cli.up_cmd import UpConfig, default_drafters, run_up

    opts["api_keys"], opts["admin_keys"] = tuple(opts["api_keys"]), tuple(opts["admin_keys"])
    opts["allow_drafters"] = tuple(opts["allow_drafters"])
    opts["served_model_names"] = tuple(opts["served_model_names"])
    opts["drafters"] = tuple(opts["drafters"])
    vllm = opts.pop("speculative_config")
    if vllm is not None:
        from specgrove.cli.speculative_config import parse

        try:
            sc = parse(vllm, opts["target"])
        except ValueError as exc:
            _fail(exc)
        opts["drafters"] = (sc.drafter, *(opts["drafters"] or default_drafters(opts["target"])))
        opts["default_drafter"], opts["default_tree"] = sc.default_drafter, sc.default_tree
    run_up(UpConfig(**opts))


@main.command()
@click.option("--target", default="smollm2-135m-instruct", show_default=True, help="The target model.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to write the head.")
@click.option("--work", default=None, type=click.Path(file_okay=False),
              help="Work directory (data, checkpoints); a rerun resumes from it "
                   "[~/.cache/specgrove/distill/<OUT's name>].")
@click.option("--max-minutes", default=85.0, show_default=True, type=float, help="Budget for the whole run.")
@click.option("--prompts", default=4000, show_default=True, type=int, help="Prompts to answer at most.")
@click.option("--max-new-tokens", default=192, show_default=True, type=int, help="Per response.")
@click.option("--feature-layers", default="", help="Target layers, e.g. 2,15,29 [low, middle, last].")
@click.option("--draft-vocab", default=6144, show_default=True, type=int, help="Truncated vocabulary size.")
@click.option("--steps", default=4000, show_default=True, type=int, help="Training steps at most.")
@click.option("--batch", "train_batch", default=8, show_default=True, type=int, help="Training windows per step.")
@click.option("--window", default=256, show_default=True, type=int, help="Tokens per training window.")
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--ttt-steps", default=2, show_default=True, type=int,
              help="Training-time-test unroll (1 = plain EAGLE training).")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16"]),
              help="The target's precision while generating data.")
@click.option("--seed", default=0, show_default=True, type=int)
def distill(**opts) -> None:
    """Train an EAGLE draft head for a target by self-distillation (no downloads)."""
    from specgrove.cli.distill_cmd import run_distill_command

    try:
        run_distill_command(**opts)
    except Exception as exc:  # noqa: BLE001 -- one clear line, never a traceback
        _fail(exc)


@main.command()
@click.option("--url", default=None, help="REST URL of a running gateway, e.g. http://127.0.0.1:8000.")
@click.option("--start", is_flag=True, help="Start `specgrove up` for the run (on free ports) and stop it after.")
@click.option("--up-arg", "up_args", multiple=True, metavar="ARG",
              help="An argument for the started `up` (repeatable), e.g. --up-arg=--drafter --up-arg=lookup=ngram.")
@click.option("--prompts", default=None, type=click.Path(exists=True, dir_okay=False),
              help="JSONL rows with prompt (or messages), id, category [a shipped set of 24 prompts].")
@click.option("--setting", "settings", multiple=True, metavar="NAME=JSON|NAME=default|DRAFTER",
              help='A speculation setting (repeatable): off=\'{"drafter": "none"}\', '
                   'eagle84=\'{"drafter": "eagle", "tree": "8:4"}\', default=default, or a drafter name '
                   "[off and default].")
@click.option("--baseline", default=None, help="The setting speedups are relative to [the first].")
@click.option("--concurrency", default="1", show_default=True,
              help="Concurrent clients, comma-separated, e.g. 1,4,8.")
@click.option("--repeats", default=3, show_default=True, type=int)
@click.option("--max-tokens", default=128, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float)
@click.option("--seed", default=None, type=int, help="Seed every request (sampled runs replay exactly).")
@click.option("--api-key", default=None, envvar="SPECGROVE_API_KEY", show_envvar=True)
@click.option("--limit", default=None, type=int, help="Use only the first N prompts.")
@click.option("--peer", "peers", multiple=True, type=click.Choice(["hf", "hf-assisted"]),
              help="Also run Hugging Face generate (hf) or its prompt-lookup assisted generation "
                   "(hf-assisted) on the same prompts at batch 1, in this process (repeatable).")
@click.option("--out", default="bench-results", show_default=True, type=click.Path(file_okay=False),
              help="Directory for results.json, report.md and the plots.")
def bench(**opts) -> None:
    """Run one workload against several speculation settings through a real gateway."""
    from specgrove.cli.bench_cmd import BenchOptions, run_bench

    try:
        opts["concurrency"] = tuple(int(c) for c in str(opts["concurrency"]).split(",") if c.strip())
    except ValueError:
        raise click.UsageError("--concurrency: comma-separated integers, e.g. 1,4,8") from None
    opts["settings"], opts["up_args"] = tuple(opts["settings"]), tuple(opts["up_args"])
    opts["peers"] = tuple(opts["peers"])
    try:
        summary = run_bench(BenchOptions(**opts))
    except ValueError as exc:
        _fail(exc)
    click.echo((Path(opts["out"]) / "report.md").read_text())
    click.echo(f"wrote {opts['out']}/results.json, report.md, {', '.join(summary['plots'])}", err=True)


@main.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The gateway's REST URL (/tokenize).")
@click.option("--grpc", "grpc_address", default=None, metavar="HOST:PORT",
              help="The gateway's gRPC address (Generate) [the URL's host:50050].")
@click.option("--api-key", default=None, envvar="SPECGROVE_API_KEY", show_envvar=True)
@click.option("--prompts", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JSONL rows with prompt (or messages), and optional id and category.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The record file to write (JSONL).")
@click.option("--model", default=None, help="The model name to ask for [the gateway's first].")
@click.option("--max-tokens", default=128, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float)
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--top-k", default=0, show_default=True, type=int)
@click.option("--seed", default=None, type=int, help="Seed of the first prompt, +1 per prompt [drawn by the gateway].")
@click.option("--chat/--no-chat", default=True, show_default=True, help="Send prompts as a user message.")
@click.option("--drafter", default=None, help="The requests' drafter (none: off) [the gateway's default speculation].")
@click.option("--tree", default=None, help="The requests' tree, N:D[:K] or 4,2,2,1 [the gateway's default].")
@click.option("--concurrency", default=1, show_default=True, type=int, help="Requests in flight at once.")
@click.option("--limit", default=None, type=int, help="Record only the first N prompts.")
def record(**opts) -> None:
    """Record requests through a running gateway for exact offline replay (`specgrove replay`)."""
    from specgrove.cli.record_cmd import RecordOptions, run_record

    try:
        summary = run_record(RecordOptions(**opts))
    except Exception as exc:  # noqa: BLE001 -- one clear line, never a traceback
        _fail(exc)
    for failure in summary["failed"]:
        click.echo(f"specgrove: not recorded: {failure}", err=True)
    click.echo(f"recorded {summary['recorded']} requests from {summary['model']} into {summary['out']} "
               f"in {summary['seconds']:.1f} s", err=True)
    if summary["failed"]:
        sys.exit(1)


@main.command()
@click.argument("records", type=click.Path(exists=True, dir_okay=False))
@click.option("--drafter", required=True, metavar="[NAME=]KIND[:SPEC]",
              help="The drafter to evaluate, as on `draft`: ngram, suffix, model:PATH, eagle:PATH|NAME.")
@click.option("--tree", default=None, help="N:D[:K] or 4,2,2,1 [each request's live tree, else 8:4].")
@click.option("--target", default=None, help="The target model (vocabulary, features, --calibrate) [the records'].")
@serve_cmds.precision_options
@click.option("--device", default="auto", show_default=True)
@click.option("--kernels", "kernel_backend", default="auto", show_default=True,
              type=click.Choice(["auto", "torch", "triton", "cpu"]))
@click.option("--block-size", default=16, show_default=True, type=int)
@click.option("--kv-blocks", default=2048, show_default=True, type=int)
@click.option("--max-tree-nodes", default=64, show_default=True, type=int,
              help="The target's node limit that trees were clamped to (the target's --max-tree-nodes).")
@click.option("--coupled/--no-coupled", default=None, help="Coupled drafting [as recorded].")
@click.option("--costs", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Verify costs saved by --calibrate --save-costs.")
@click.option("--verify-cost-ms", default=None, metavar="N=MS,...", help="Verify time by tree nodes, e.g. 1=20,8=23,64=40.")
@click.option("--draft-cost-ms", default=None, metavar="MS|N=MS,...", help="Draft time per step [measured in the replay].")
@click.option("--calibrate", is_flag=True, help="Time the target's verify by tree size here (loads the target).")
@click.option("--save-costs", default=None, type=click.Path(dir_okay=False), help="With --calibrate: save the costs.")
@click.option("--limit", default=None, type=int, help="Replay only the first N records.")
@click.option("--per-request", is_flag=True, help="With --json: every request's steps too.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def replay(**opts) -> None:
    """Replay recorded requests through a drafter: exact tau and acceptance without the target."""
    from specgrove.cli.replay_cmd import ReplayOptions, run_replay
    from specgrove.cli.replay_report import text

    try:
        summary = run_replay(ReplayOptions(**opts))
    except Exception as exc:  # noqa: BLE001 -- one clear line, never a traceback
        _fail(exc)
    click.echo(json.dumps(summary) if opts["as_json"] else text(summary), nl=opts["as_json"])


@main.group()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The gateway's REST URL.")
@click.option("--api-key", default=None, envvar="SPECGROVE_API_KEY", show_envvar=True,
              help="The admin key (or an API key, enough for list).")
@click.pass_context
def drafters(ctx, url: str, api_key: str | None) -> None:
    """List, load and unload the draft service's drafters through a running gateway."""
    ctx.obj = (url, api_key)


@drafters.command("list")
@click.pass_obj
def drafters_list(obj) -> None:
    """The loaded drafters and their specs."""
    from specgrove.cli.drafters_cmd import list_drafters

    list_drafters(*obj)


@drafters.command("load")
@click.argument("name")
@click.argument("spec")
@click.option("--default", "make_default", is_flag=True, help="Make it the default drafter.")
@click.pass_obj
def drafters_load(obj, name: str, spec: str, make_default: bool) -> None:
    """Load drafter NAME from SPEC (KIND[:SPEC], e.g. ngram:4 or model:/path)."""
    from specgrove.cli.drafters_cmd import load_drafter

    load_drafter(*obj, name, spec, make_default)


@drafters.command("unload")
@click.argument("name")
@click.pass_obj
def drafters_unload(obj, name: str) -> None:
    """Unload drafter NAME (the default cannot go)."""
    from specgrove.cli.drafters_cmd import unload_drafter

    unload_drafter(*obj, name)


@main.command("trace")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--request", "request_id", default=None,
              help="Request id (or a prefix, or a trace id) whose timeline to show [the latest].")
@click.option("--png", "png", default=None, metavar="OUT", help="Also draw the timeline into this PNG.")
def trace_cmd(file: str, request_id: str | None, png: str | None) -> None:
    """List the requests in a trace file and show one request's step timeline."""
    from specgrove.cli.trace_cmd import run_trace

    try:
        click.echo(run_trace(file, request_id, png), nl=False)
    except Exception as exc:  # noqa: BLE001 -- one clear line, never a traceback
        _fail(exc)


def _serve(run, opts: dict) -> None:
    try:
        run(**opts)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 -- one clear line, never a traceback
        _fail(exc)


def _fail(exc: Exception) -> None:
    if isinstance(exc, click.ClickException):
        raise exc
    kind = type(exc).__name__
    click.echo(f"specgrove: error: {exc} ({kind})", err=True)
    sys.exit(2)

