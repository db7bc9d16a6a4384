"""The ``specgrove`` command line: the one composition root.

``specgrove.cli`` is the only part of the shared package that imports the service packages
(``gateway``, ``target_service``, ``draft_service``), and only inside command bodies: importing
it, ``specgrove gateway``, ``specgrove up`` and ``specgrove trace`` load no torch.
"""
from __future__ import annotations

import json

import click

from specgrove.cli import serve_cmds
from specgrove.cli.fail import fail


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
        fail(exc)
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
@click.option("--target", multiple=True, default=("127.0.0.1:50051",), show_default=True,
              callback=serve_cmds.replica_addresses,
              help="Target service HOST:PORT, or dns:NAME:PORT for every address of a name, looked "
                   "up again every 10 s (repeatable: several replicas; each sequence stays on one).")
@click.option("--draft", multiple=True, default=("127.0.0.1:50052",), show_default=True,
              callback=serve_cmds.replica_addresses,
              help="Draft service HOST:PORT or dns:NAME:PORT (repeatable, as --target).")
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
@click.option("--shadow-drafter", "shadow_drafters", multiple=True, metavar="NAME",
              help="Score this loaded drafter on every request's output without drafting for it "
                   "(repeatable; metrics specgrove:shadow_*).")
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
    opts["shadow_drafters"] = tuple(opts["shadow_drafters"])
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
@click.option("--target-replicas", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Target processes behind the gateway (replica i listens on --target-port + 10i); "
                   "they split the cores (OMP_NUM_THREADS).")
@click.option("--draft-replicas", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Draft processes behind the gateway (replica i listens on --draft-port + 10i); "
                   "they split the cores (OMP_NUM_THREADS).")
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
@click.option("--shadow-drafter", "shadow_drafters", multiple=True, metavar="NAME",
              help="Gateway: score this loaded drafter on every request's output without drafting for it "
                   "(repeatable; metrics specgrove:shadow_*).")
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
    opts["shadow_drafters"] = tuple(opts["shadow_drafters"])
    vllm = opts.pop("speculative_config")
    if vllm is not None:
        from specgrove.cli.speculative_config import parse

        try:
            sc = parse(vllm, opts["target"])
        except ValueError as exc:
            fail(exc)
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
        fail(exc)


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
        fail(exc)


def _serve(run, opts: dict) -> None:
    try:
        run(**opts)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 -- one clear line, never a traceback
        fail(exc)


# The experiment commands (bench, record, replay, drafters) live in their own module.
from specgrove.cli.experiment_cli import bench, drafters, record, replay  # noqa: E402

for _command in (bench, record, replay, drafters):
    main.add_command(_command)
