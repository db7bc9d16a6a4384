"""``specgrove bench``: one workload against several speculation settings through a real
gateway (``--url``, or ``--start`` to run ``specgrove up`` for the duration), with a table,
a Markdown report and plots (``bench_run`` measures, ``bench_report`` writes)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx


@dataclass(frozen=True)
class BenchOptions:
    url: str | None
    start: bool
    up_args: tuple[str, ...]
    prompts: str | None
    settings: tuple[str, ...]
    baseline: str | None
    concurrency: tuple[int, ...]
    repeats: int
    max_tokens: int
    temperature: float
    seed: int | None
    api_key: str | None
    out: str
    limit: int | None
    peers: tuple[str, ...] = ()


@contextlib.contextmanager
def _gateway(opts: BenchOptions):
    """The REST URL to measure: the one given, or an ``up`` started (and stopped) here."""
    if not opts.start:
        yield opts.url
        return
    from specgrove.service import free_ports

    http, grpc_port, tport, dport = free_ports(4)
    up = subprocess.Popen([sys.executable, "-m", "specgrove.cli", "up", "--port", str(http), "--grpc-port",
                           str(grpc_port), "--target-port", str(tport), "--draft-port", str(dport),
                           "--log-stats-interval", "0", "--disable-log-requests", *opts.up_args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 900
        while True:
            if up.poll() is not None:
                raise click.ClickException(f"specgrove up exited: {up.stderr.read()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise click.ClickException("specgrove up did not become healthy in 15 minutes")
            time.sleep(0.5)
        yield url
    finally:
        up.terminate()
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            up.kill()


def run_bench(opts: BenchOptions) -> dict:
    from tqdm import tqdm

    from specgrove.cli import bench_report
    from specgrove.cli.bench_peers import check_peers
    from specgrove.cli.bench_run import DEFAULT_PROMPTS, DEFAULT_SETTINGS, Bench, Setting, load_prompts

    if opts.url is None and not opts.start:
        raise click.UsageError("give --url of a running gateway, or --start")
    settings = [Setting.parse(s) for s in opts.settings] or list(DEFAULT_SETTINGS)
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise click.UsageError(f"setting names must differ: {names}")
    baseline = opts.baseline or names[0]
    if baseline not in names:
        raise click.UsageError(f"--baseline {baseline!r} is not one of {names}")
    rows = load_prompts(opts.prompts or DEFAULT_PROMPTS)[:opts.limit]
    check_peers(opts.peers)
    with _gateway(opts) as url:
        headers = {"authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        model = httpx.get(url + "/v1/models", headers=headers, timeout=30).json()["data"][0]["id"]
        bench = Bench(url, opts.api_key, model, opts.max_tokens, opts.temperature, opts.seed)
        total = len(rows) * opts.repeats * (len(settings) * len(opts.concurrency) + len(opts.peers))
        runs = []
        with tqdm(total=total, unit="req", desc="bench", file=sys.stderr) as progress:
            for repeat in range(opts.repeats):
                for conc in opts.concurrency:
                    for setting in settings:  # settings take turns: drift hits them alike
                        runs.append(asyncio.run(bench.run(rows, setting, conc, repeat, progress)))
            if opts.peers:
                from specgrove.cli.bench_peers import peer_runs

                for peer in opts.peers:  # in this process, after the gateway's runs, at batch 1
                    runs += peer_runs(model, rows, peer, opts.max_tokens, opts.temperature, opts.repeats, progress)
    meta = {"model": model, "prompts": len(rows), "max_tokens": opts.max_tokens,
            "temperature": opts.temperature, "repeats": opts.repeats,
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "python": platform.python_version()}
    return bench_report.write(Path(opts.out), runs, baseline, meta)
