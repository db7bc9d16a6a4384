"""``specgrove target``, ``draft`` and ``gateway``: run one service in this process."""
from __future__ import annotations

import asyncio
import logging

import click

from specgrove.auth import ENV_SERVICE_TOKEN
from specgrove.config import DTYPES, QUANTIZATIONS, ModelRunConfig
from specgrove.kv import KVCacheConfig
from specgrove.telemetry import TelemetryConfig

PRECISION_OPTIONS = [
    click.option("--dtype", default="auto", show_default=True, type=click.Choice(DTYPES),
                 help="auto: bfloat16 on GPUs and on CPUs with native bf16 (AVX512_BF16/AMX), "
                      "else float32."),
    click.option("--quantization", default="none", show_default=True, type=click.Choice(QUANTIZATIONS),
                 help="int8: weight-only int8 linears with per-channel scales (CPU kernels, bf16)."),
]

COMMON_MODEL_OPTIONS = [
    click.option("--host", default="127.0.0.1", show_default=True),
    *PRECISION_OPTIONS,
    click.option("--device", default="auto", show_default=True),
    click.option("--kernels", "kernel_backend", default="auto", show_default=True,
                 type=click.Choice(["auto", "torch", "triton", "cpu"])),
    click.option("--block-size", default=16, show_default=True, type=int),
    click.option("--kv-blocks", default=2048, show_default=True, type=int,
                 help="KV cache size in blocks of --block-size tokens."),
    click.option("--log-level", default="INFO", show_default=True),
]


TRACING_OPTIONS = [
    click.option("--trace-file", default=None, metavar="PATH",
                 help="Append trace spans to PATH as OTLP/JSON lines (read with `specgrove trace`)."),
    click.option("--otlp-endpoint", default=None, metavar="URL",
                 help="Send trace spans to an OTLP collector, e.g. http://localhost:4317 "
                      "[OTEL_EXPORTER_OTLP_ENDPOINT]."),
    click.option("--service-name", default="",
                 help="service.name of the spans [OTEL_SERVICE_NAME, else specgrove-<service>]."),
]


def service_token_option(fn):
    """The token the target and draft services require of their callers (the gateway sends it)."""
    return click.option("--service-token", default="", envvar=ENV_SERVICE_TOKEN, show_envvar=True,
                        help="Shared token between gateway and services ('authorization: Bearer' "
                             "metadata); prefer the environment variable, which `ps` does not show "
                             "[none: the port is open to local processes].")(fn)


def operator_log_options(fn):
    """vLLM's switches for the per-request log line and the periodic stats line."""
    fn = click.option("--disable-log-requests", is_flag=True,
                      help="No INFO line per finished request.")(fn)
    return click.option("--log-stats-interval", "log_stats_interval_s", default=10.0, show_default=True,
                        type=float, help="Seconds between stats lines while there is work (0: none).")(fn)


def served_model_name_option(fn):
    """What clients call the model (vLLM's flag); several names are aliases, the first is shown."""
    return click.option("--served-model-name", "served_model_names", multiple=True, metavar="NAME",
                        help="Model name(s) clients use; the first one is what responses carry "
                             "(repeatable) [the target's name or path].")(fn)


TLS_OPTIONS = [
    click.option("--tls-cert", default=None, metavar="PEM",
                 help="Serve gRPC over TLS with this certificate (chain); also the client "
                      "certificate this process presents to the services it calls."),
    click.option("--tls-key", default=None, metavar="PEM", help="The private key of --tls-cert."),
    click.option("--tls-ca", default=None, metavar="PEM",
                 help="CA bundle: callers must present a certificate it signed (mutual TLS), and "
                      "the services this process calls are verified against it "
                      "[none: no client certificates; the system roots verify servers]."),
]


def tls_options(fn):
    for opt in reversed(TLS_OPTIONS):
        fn = opt(fn)
    return fn


def _tls(o: dict):
    """The checked ``TlsConfig`` of the --tls-* options (None without them), before any model
    is loaded: a bad path fails in a second, not after minutes of loading."""
    from specgrove import tls

    return tls.load(o.get("tls_cert"), o.get("tls_key"), o.get("tls_ca"))


def precision_options(fn):
    for opt in reversed(PRECISION_OPTIONS):
        fn = opt(fn)
    return fn


def model_options(fn):
    for opt in reversed(COMMON_MODEL_OPTIONS):
        fn = opt(fn)
    return fn


def tracing_options(fn):
    for opt in reversed(TRACING_OPTIONS):
        fn = opt(fn)
    return fn


def _telemetry(o: dict) -> TelemetryConfig:
    return TelemetryConfig(o.get("trace_file"), o.get("otlp_endpoint"), o.get("service_name") or "")


def _run_config(model: str, o: dict) -> ModelRunConfig:
    return ModelRunConfig(model, o["dtype"], o["device"], o["kernel_backend"],
                          KVCacheConfig(o["block_size"], o["kv_blocks"]),
                          quantization=o.get("quantization", "none"))


def run_target(target: str, port: int, max_num_seqs: int, max_tree_nodes: int,
               max_model_len: int | None, tp: int, service_token: str, **o) -> None:
    tls = _tls(o)
    from target_service.builder import build_runner
    from target_service.server import TargetServer, TargetServerConfig
    from target_service.local import TargetLimits
    from target_service.tp.env import RankEnv

    logging.basicConfig(level=o["log_level"], format="%(asctime)s %(name)s %(message)s")
    run = _run_config(target, o)
    rank = RankEnv.from_environ()
    if rank is not None and rank.rank != 0:  # a worker rank under torchrun: serve, then exit
        build_runner(run, rank.world_size)
        return
    cfg = TargetServerConfig(run, o["host"], port, TargetLimits(max_num_seqs, max_tree_nodes),
                             max_model_len, telemetry=_telemetry(o),
                             tp=rank.world_size if rank is not None else tp, service_token=service_token,
                             tls=tls)
    asyncio.run(TargetServer(cfg).serve_forever())


def run_draft(target_vocab_from: str, drafters: tuple[str, ...], default: str, port: int,
              service_token: str, allow_drafters: tuple[str, ...], max_drafters: int, **o) -> None:
    tls = _tls(o)
    from draft_service.load_policy import LoadPolicy
    from draft_service.server import DraftServer, DraftServerConfig
    from specgrove.config import parse_drafter_option

    logging.basicConfig(level=o["log_level"], format="%(asctime)s %(name)s %(message)s")
    pairs = tuple(parse_drafter_option(d) for d in drafters) or (("ngram", "ngram"),)
    cfg = DraftServerConfig(target_vocab_from, pairs, default, _run_config("", o), o["host"], port,
                            telemetry=_telemetry(o), service_token=service_token, tls=tls,
                            load_policy=LoadPolicy(tuple(allow_drafters), max_drafters))
    asyncio.run(DraftServer(cfg).serve_forever())


def replica_addresses(ctx, param, value: tuple[str, ...]) -> tuple[str, ...]:
    """Click callback: every --target / --draft is HOST:PORT or dns:NAME:PORT."""
    from gateway.discovery import check_address

    try:
        return tuple(dict.fromkeys(check_address(v) for v in value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def run_gateway(target: tuple[str, ...], draft: tuple[str, ...], host: str, port: int, grpc_port: int, tokenizer: str | None,
                api_keys: tuple[str, ...], admin_keys: tuple[str, ...], service_token: str, max_batch: int, max_waiting: int, default_tree: str,
                max_requests_per_second: int, adaptive_speculation: bool, shadow_drafters: tuple[str, ...],
                grace_s: float,
                log_level: str, served_model_names: tuple[str, ...], disable_log_requests: bool,
                log_stats_interval_s: float, chat_template: str | None, **tracing) -> None:
    tls = _tls(tracing)
    from gateway.orchestrator import SchedulerConfig
    from gateway.server import GatewayServer
    from gateway.state import GatewayConfig
    from specgrove.config import parse_tree_option

    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(message)s")
    cfg = GatewayConfig(target, draft, host, port, grpc_port, tokenizer,
                        parse_tree_option(default_tree),
                        scheduler=SchedulerConfig(max_batch, max_waiting,
                                                  adaptive_speculation=adaptive_speculation,
                                                  shadow_drafters=tuple(shadow_drafters)),
                        api_keys=api_keys, admin_keys=admin_keys, service_token=service_token,
                        max_requests_per_second=max_requests_per_second, grace_s=grace_s,
                        telemetry=_telemetry(tracing), tls=tls,
                        served_model_names=tuple(served_model_names),
                        log_requests=not disable_log_requests, log_stats_interval_s=log_stats_interval_s,
                        chat_template=chat_template)
    asyncio.run(GatewayServer(cfg).serve_forever())
