"""The commands for draft-swapping experiments: ``bench`` (settings through a real gateway),
``record`` / ``replay`` (exact offline evaluation of a drafter on recorded traffic) and
``drafters`` (the gateway's drafter admin). Registered on ``specgrove`` by ``specgrove.cli``;
their bodies import what they need lazily, so ``--help`` loads no torch."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from specgrove.cli import serve_cmds
from specgrove.cli.fail import fail


@click.command()
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
@click.option("--peer", "peers", multiple=True, type=click.Choice(["hf", "hf-assisted", "llama.cpp"]),
              help="Also run Hugging Face generate (hf), its prompt-lookup assisted generation "
                   "(hf-assisted) or llama.cpp on the model's GGUF (llama.cpp; needs "
                   "llama-cpp-python) on the same prompts at batch 1, in this process (repeatable).")
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
        fail(exc)
    click.echo((Path(opts["out"]) / "report.md").read_text())
    click.echo(f"wrote {opts['out']}/results.json, report.md, {', '.join(summary['plots'])}", err=True)


@click.command()
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
        fail(exc)
    for failure in summary["failed"]:
        click.echo(f"specgrove: not recorded: {failure}", err=True)
    click.echo(f"recorded {summary['recorded']} requests from {summary['model']} into {summary['out']} "
               f"in {summary['seconds']:.1f} s", err=True)
    if summary["failed"]:
        sys.exit(1)


@click.command()
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
        fail(exc)
    click.echo(json.dumps(summary) if opts["as_json"] else text(summary), nl=opts["as_json"])


@click.group()
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
