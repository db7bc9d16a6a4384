"""``specgrove up``: target, draft and gateway as three processes, supervised together.

Starts the target and draft services, waits until both report SERVING on ``grpc.health.v1``,
starts the gateway, waits for its ``/health``, prints the URLs, and then supervises: a child
that dies is restarted with backoff while the other two keep serving. Ctrl-C / SIGTERM drains
in order: the gateway finishes in-flight requests (``--drain-timeout``), then the draft and
target services stop; exit code 0. The children run in their own session, so a terminal's
Ctrl-C reaches ``up`` alone and the order holds; they get SIGTERM if ``up`` itself dies. The
services authenticate the gateway with a random token made here for them (``specgrove.auth``);
``--api-key`` / ``--admin-key`` protect the public ports. ``--trace-file`` / ``--otlp-endpoint``
go to all three services, each with its own service name, so one trace spans all three.
``--tls-cert`` / ``--tls-key`` / ``--tls-ca`` go to all three too (mutual TLS between them and on
the gRPC gateway, ``specgrove.tls``); ``--tls-generate`` makes a throwaway CA and certificates for
them instead (``specgrove.certs``), in a private directory removed when ``up`` exits.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Iterator

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specgrove.auth import ENV_SERVICE_TOKEN
from specgrove.clients import open_channel
from specgrove.cpu_threads import thread_share
from specgrove.tls import TlsConfig, TlsError, certifies, load as load_tls


@dataclass(frozen=True)
class UpConfig:
    target: str
    drafters: tuple[str, ...]
    host: str
    port: int
    grpc_port: int
    target_port: int
    draft_port: int
    dtype: str
    quantization: str
    kv_blocks: int
    default_tree: str
    trace_file: str | None = None
    otlp_endpoint: str | None = None
    tp: int = 1
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    drain_timeout_s: float = 30.0  # the gateway's time to finish in-flight requests on SIGTERM
    allow_drafters: tuple[str, ...] = ()  # what LoadDrafter may load at run time (draft --allow-drafter)
    served_model_names: tuple[str, ...] = ()  # gateway --served-model-name
    disable_log_requests: bool = False  # gateway: no line per request
    log_stats_interval_s: float = 10.0  # gateway: stats line period (0 = none)
    startup_timeout_s: float = 900.0
    grace_s: float = 15.0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_generate: bool = False  # a throwaway CA and certificates for the three children
    # Passed through to the service that owns them.
    max_num_seqs: int = 256  # target
    max_tree_nodes: int = 64  # target
    max_model_len: int | None = None  # target
    device: str = "auto"  # target and draft
    kernel_backend: str = "auto"  # target and draft
    default_drafter: str = ""  # draft --default
    max_batch: int = 32  # gateway
    max_waiting: int = 256  # gateway
    max_requests_per_second: int = 0  # gateway
    adaptive_speculation: bool = True  # gateway
    shadow_drafters: tuple[str, ...] = ()  # gateway
    chat_template: str | None = None  # gateway
    log_level: str = "INFO"  # all three
    target_replicas: int = 1  # target processes; replica i on target_port + REPLICA_PORT_STEP * i
    draft_replicas: int = 1  # draft processes, likewise from draft_port

    def replica_ports(self, service: str) -> dict[str, int]:
        """Child name -> port of each replica of ``service`` ("target" or "draft")."""
        first, count = ((self.target_port, self.target_replicas) if service == "target"
                        else (self.draft_port, self.draft_replicas))
        return {service if i == 0 else f"{service}-{i}": first + REPLICA_PORT_STEP * i for i in range(count)}


REPLICA_PORT_STEP = 10  # apart, so the default target (50051) and draft (50052) ports interleave


def _tracing(cfg: UpConfig, service: str) -> list[str]:
    """Tracing options for one service; its own service name even when OTEL_SERVICE_NAME is set."""
    if not (cfg.trace_file or cfg.otlp_endpoint):
        return []
    args = ["--service-name", f"specgrove-{service}"]
    if cfg.trace_file:
        args += ["--trace-file", os.path.abspath(cfg.trace_file)]
    if cfg.otlp_endpoint:
        args += ["--otlp-endpoint", cfg.otlp_endpoint]
    return args


def default_drafters(target: str) -> tuple[str, ...]:
    """``lookup`` (n-gram) always; first, as the default, the EAGLE head shipped for the target
    when there is one (the embedded model has one)."""
    from draft_service.factory import shipped_head

    return (f"eagle=eagle:{target}", "lookup=ngram") if shipped_head(target) else ("lookup=ngram",)


def _commands(cfg: UpConfig, tls: TlsConfig | None = None) -> dict[str, list[str]]:
    """Each child's command: the target and draft replicas, then the gateway over all of them."""
    base = _service_commands(cfg, tls)
    replicas = {name: base[service] + ["--port", str(port)] for service in ("target", "draft")
                for name, port in cfg.replica_ports(service).items()}
    return replicas | {"gateway": base["gateway"]}


def _service_commands(cfg: UpConfig, tls: TlsConfig | None) -> dict[str, list[str]]:
    """The three services' commands; a target or draft replica adds its ``--port``."""
    cli = [sys.executable, "-m", "specgrove.cli"]
    tls_args = tls.cli_args() if tls is not None else []  # paths, not secrets: argv is fine
    drafters = [x for d in (cfg.drafters or default_drafters(cfg.target)) for x in ("--drafter", d)]
    machine = ["--device", cfg.device, "--kernels", cfg.kernel_backend, "--log-level", cfg.log_level]
    replicas = [x for service in ("target", "draft") for p in cfg.replica_ports(service).values()
                for x in (f"--{service}", f"127.0.0.1:{p}")]
    return {
        "target": cli + ["target", "--target", cfg.target,
                         "--dtype", cfg.dtype, "--quantization", cfg.quantization,
                         "--kv-blocks", str(cfg.kv_blocks), "--tp", str(cfg.tp), *machine,
                         "--max-num-seqs", str(cfg.max_num_seqs), "--max-tree-nodes", str(cfg.max_tree_nodes),
                         *(["--max-model-len", str(cfg.max_model_len)] if cfg.max_model_len else []),
                         *tls_args, *_tracing(cfg, "target")],
        "draft": cli + ["draft", "--target-vocab-from", cfg.target,
                        "--dtype", cfg.dtype, "--quantization", cfg.quantization, *drafters, *machine,
                        *(["--default", cfg.default_drafter] if cfg.default_drafter else []),
                        *[x for a in cfg.allow_drafters for x in ("--allow-drafter", a)],
                        *tls_args, *_tracing(cfg, "draft")],
        "gateway": cli + ["gateway", *replicas, "--host", cfg.host,
                          "--port", str(cfg.port), "--grpc-port", str(cfg.grpc_port),
                          "--default-tree", cfg.default_tree, "--drain-timeout", str(cfg.drain_timeout_s),
                          *[x for n in cfg.served_model_names for x in ("--served-model-name", n)],
                          *(["--disable-log-requests"] if cfg.disable_log_requests else []),
                          "--log-stats-interval", str(cfg.log_stats_interval_s),
                          "--max-batch", str(cfg.max_batch), "--max-waiting", str(cfg.max_waiting),
                          "--max-requests-per-second", str(cfg.max_requests_per_second),
                          "--log-level", cfg.log_level,
                          *([] if cfg.adaptive_speculation else ["--no-adaptive-speculation"]),
                          *[x for n in cfg.shadow_drafters for x in ("--shadow-drafter", n)],
                          *(["--chat-template", os.path.abspath(cfg.chat_template)] if cfg.chat_template else []),
                          *tls_args, *_tracing(cfg, "gateway")],
    }


async def _grpc_serving(address: str, tls: TlsConfig | None = None) -> bool:
    try:
        async with open_channel(address, tls, options=()) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when ``up`` dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the children outlive a killed `up`
        pass


@dataclass
class Child:
    """One supervised service process and its restart state."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None  # when a dead child is due to start again

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self.started_at, self.restart_at = time.monotonic(), None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


class Supervisor:
    """Keeps the three services running: a child that dies is restarted with exponential
    backoff (1 s doubling to ``max_backoff_s``; back to 1 s after ``stable_s`` of uptime) while
    the others keep serving -- the gateway decodes without speculation while the draft service
    is away and answers 503 while the target is. Stopping drains in dependency order."""

    max_backoff_s = 30.0
    stable_s = 60.0

    def __init__(self, cfg: UpConfig, cmds: dict[str, list[str]], env: dict[str, dict[str, str]]) -> None:
        self.cfg = cfg
        self.children = {name: Child(name, cmd, env[name]) for name, cmd in cmds.items()}

    def start(self, name: str) -> None:
        self.children[name].start()

    def dead(self) -> str | None:
        return next((f"{c.name} exited with code {c.exit_code}" for c in self.children.values()
                     if c.exit_code is not None), None)

    def wait_until(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while not ready():
            if (why := self.dead()) is not None:
                raise click.ClickException(f"{why} while waiting for {what}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"timed out waiting for {what}")
            time.sleep(0.5)

    def watch(self) -> None:
        """One supervision pass: schedule the restart of dead children, restart those due."""
        now = time.monotonic()
        for c in self.children.values():
            if c.proc is None or c.exit_code is None:
                continue
            if c.restart_at is None:
                if now - c.started_at >= self.stable_s:
                    c.restarts = 0
                delay = min(self.max_backoff_s, 2.0 ** c.restarts)
                c.restart_at = now + delay
                click.echo(f"specgrove up: {c.name} exited with code {c.exit_code}; "
                           f"restarting it in {delay:.0f}s", err=True)
            elif now >= c.restart_at:
                c.restarts += 1
                c.start()

    def stop(self) -> None:
        """The gateway first (it stops admitting and finishes in-flight requests within its
        drain timeout), then the draft and target services; SIGKILL whatever outlives its grace."""
        order = [["gateway"], [n for n in self.children if n != "gateway"]]
        waits = [self.cfg.drain_timeout_s + self.cfg.grace_s, self.cfg.grace_s]
        for names, wait_s in zip(order, waits):
            procs = [c.proc for n in names if (c := self.children.get(n)) and c.proc is not None]
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + wait_s
            for proc in procs:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def child_environments(cfg: UpConfig) -> dict[str, dict[str, str]]:
    """Secrets travel in the environment, not in argv (which ``ps`` shows): the service token
    (the user's, or a fresh random one only these three processes know) and the API keys.
    Several replicas of a service split the cores between them (``OMP_NUM_THREADS``)."""
    base = dict(os.environ)
    base[ENV_SERVICE_TOKEN] = base.get(ENV_SERVICE_TOKEN) or secrets.token_urlsafe(32)
    gateway = dict(base)
    if cfg.api_keys:
        gateway["SPECGROVE_API_KEYS"] = " ".join(cfg.api_keys)
    if cfg.admin_keys:
        gateway["SPECGROVE_ADMIN_KEYS"] = " ".join(cfg.admin_keys)
    services = {}
    for service in ("target", "draft"):
        replicas = cfg.replica_ports(service)
        env = base if len(replicas) == 1 else base | {"OMP_NUM_THREADS": str(thread_share(len(replicas)))}
        services |= {name: env for name in replicas}
    return services | {"gateway": gateway}


@contextlib.contextmanager
def transport_security(cfg: UpConfig) -> Iterator[tuple[TlsConfig | None, str]]:
    """The children's TLS configuration (None: plaintext) and a line for the banner: the user's
    certificates, checked before anything starts, or throwaway ones alive while ``up`` runs."""
    try:
        given = load_tls(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
    except TlsError as exc:
        raise click.BadParameter(str(exc)) from None
    if given is not None and not certifies(given, "127.0.0.1"):
        # Else every health probe fails the handshake and `up` only times out, minutes later.
        raise click.BadParameter(f"--tls-cert {given.cert} does not name 127.0.0.1 (subject "
                                 "alternative name), the address up's gateway dials its services at")
    if not cfg.tls_generate:
        line = ""
        if given is not None:
            line = f"  mutual TLS   clients need a certificate from {given.ca}" if given.mutual else "  TLS"
        yield given, line
        return
    if given is not None:
        raise click.UsageError("--tls-generate makes its own certificates: drop --tls-cert, "
                               "--tls-key and --tls-ca, or --tls-generate")
    from specgrove import certs

    # Remote callers dial the host the gateway binds; the services bind loopback.
    with certs.temporary([cfg.host]) as made:
        yield made.node, (f"  mutual TLS   throwaway CA and a client certificate in {made.directory} "
                          f"(ca.pem, client.pem, client-key.pem; removed on exit)")


def run_up(cfg: UpConfig) -> None:
    for key in (*cfg.api_keys, *cfg.admin_keys):
        if not key or any(ch.isspace() for ch in key):
            raise click.BadParameter("API and admin keys must be non-empty and contain no spaces")
    with transport_security(cfg) as (tls, tls_line):
        _supervise(cfg, tls, tls_line)


def _supervise(cfg: UpConfig, tls: TlsConfig | None, tls_line: str) -> None:
    sup = Supervisor(cfg, _commands(cfg, tls), child_environments(cfg))
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    services = cfg.replica_ports("target") | cfg.replica_ports("draft")
    try:
        for name in services:
            sup.start(name)
        for name, port in services.items():
            sup.wait_until(lambda p=port: asyncio.run(_grpc_serving(f"127.0.0.1:{p}", tls)),
                           f"the {name} service")
        sup.start("gateway")
        base = f"http://{cfg.host}:{cfg.port}"
        sup.wait_until(lambda: _http_ok(base + "/health"), "the gateway")
        click.echo(f"specgrove is up: {cfg.target}\n"
                   f"  OpenAI REST  {base}/v1  (health {base}/health)\n"
                   f"  gRPC gateway {cfg.host}:{cfg.grpc_port}\n"
                   + (f"{tls_line}\n" if tls_line else "")
                   + f"  target {_ports(cfg, 'target')}, draft {_ports(cfg, 'draft')}; Ctrl-C stops them all",
                   err=True)
        while not stop_requested:
            sup.watch()
            time.sleep(0.25)
    except KeyboardInterrupt:
        pass
    finally:
        sup.stop()


def _ports(cfg: UpConfig, service: str) -> str:
    return ", ".join(str(p) for p in cfg.replica_ports(service).values())
