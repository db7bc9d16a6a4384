"""The Docker images and the compose stack, for real (opt-in: ``SPECGROVE_DOCKER_TESTS=1``).

Builds the images with ``deploy/build-images.sh`` (a Debian base from debootstrap, the specgrove
and Prometheus images on it; a second run reuses the base and Docker's layer cache), brings up
``deploy/docker-compose.yml`` with ``docker-compose`` (target, draft, gateway, Prometheus; the
observability profile with Grafana and Jaeger stays off), sends requests with the official
``openai`` client, checks the gateway's ``/metrics`` and that Prometheus scrapes it, and takes
the stack down. Minutes on a first run (the image build) and needs root, dockerd, the Debian
mirror and PyPI: the normal suite and CI skip it.

    SPECGROVE_DOCKER_TESTS=1 .venv/bin/python -m pytest -q -s tests/test_docker_stack.py

The stack runs under its own compose project name with free host ports, so it does not clash
with a stack or a ``specgrove up`` already on 8000 / 9090.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MODEL = "smollm2-135m-instruct"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SPECGROVE_DOCKER_TESTS") != "1",
                       reason="builds Docker images and runs the compose stack (minutes, needs "
                              "dockerd): set SPECGROVE_DOCKER_TESTS=1 to run it"),
]

BUILD_TIMEOUT_S = float(os.environ.get("SPECGROVE_DOCKER_BUILD_TIMEOUT", 3600))
READY_TIMEOUT_S = float(os.environ.get("SPECGROVE_DOCKER_READY_TIMEOUT", 600))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(what: str, check, timeout: float, interval: float = 2.0):
    """Polls ``check()`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError) as exc:  # connection refused / reset while starting
            last = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")


def compose_copy(tmp_path: Path, ports: dict[str, int]) -> Path:
    """deploy/docker-compose.yml as it is, with absolute paths and the host ports of ``ports``
    (container port -> host port), written to ``tmp_path``."""
    import yaml

    spec = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    for svc in spec["services"].values():
        build = svc.get("build")
        if isinstance(build, dict) and "context" in build:
            build["context"] = str((DEPLOY / build["context"]).resolve())
        volumes = []
        for v in svc.get("volumes", []):
            source, rest = v.split(":", 1)
            volumes.append(f"{(DEPLOY / source).resolve()}:{rest}" if source.startswith(".") else v)
        if volumes:
            svc["volumes"] = volumes
        mapped = []
        for p in svc.get("ports", []):
            container = int(str(p).rsplit(":", 1)[1])
            mapped.append(f"127.0.0.1:{ports[container]}:{container}" if container in ports else p)
        if mapped:
            svc["ports"] = mapped
    for key in [k for k in spec if k.startswith("x-")]:
        del spec[key]  # already merged into the services by the YAML loader
    out = tmp_path / "docker-compose.yml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def tools():
    """docker, docker-compose and a running daemon; asked for explicitly, so missing ones fail."""
    missing = [t for t in ("docker", "docker-compose") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"SPECGROVE_DOCKER_TESTS=1 but {', '.join(missing)} not found: apt-get install "
                    "docker.io docker-compose debootstrap")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.fail("SPECGROVE_DOCKER_TESTS=1 but dockerd does not answer (start it: "
                    f"dockerd >/var/log/dockerd.log 2>&1 &): {info.stderr.strip()[-300:]}")


@pytest.fixture(scope="module")
def images(tools):
    """deploy/build-images.sh: builds what is missing or changed, reuses the rest."""
    t0 = time.monotonic()
    run = subprocess.run(["bash", str(DEPLOY / "build-images.sh")], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
    print(f"\n[docker] build-images.sh: {time.monotonic() - t0:.0f} s (exit {run.returncode})")
    print("\n".join(line for line in run.stdout.splitlines() if line.startswith("[build-images")))
    if run.returncode != 0:
        pytest.fail(f"deploy/build-images.sh failed (exit {run.returncode}):\n{run.stdout[-6000:]}")
    sizes = {}
    for image in ("specgrove-base:bookworm", "specgrove:latest", "debian-prometheus:bookworm"):
        out = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{image} missing after build-images.sh: {out.stderr}"
        sizes[image] = int(out.stdout.strip())
    print("[docker] image sizes: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items()))
    return sizes


@pytest.fixture(scope="module")
def stack(images, tmp_path_factory):
    """The compose stack up (target, draft, gateway, Prometheus); down with its volumes after."""
    ports = {8000: free_port(), 50050: free_port(), 9090: free_port()}
    compose_file = compose_copy(tmp_path_factory.mktemp("compose"), ports)
    project = f"specgrove-test-{os.getpid()}"
    base = ["docker-compose", "-p", project, "-f", str(compose_file)]
    env = {k: v for k, v in os.environ.items() if k != "SPECGROVE_OTLP_ENDPOINT"}

    def compose(*args, timeout=600, check=True):
        out = subprocess.run(base + list(args), cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=timeout)
        if check and out.returncode != 0:
            pytest.fail(f"docker-compose {' '.join(args)} failed (exit {out.returncode}):\n{out.stdout[-4000:]}")
        return out.stdout

    t0 = time.monotonic()
    try:
        compose("up", "-d", "--no-build")
        services = set(compose("ps", "--services", "--filter", "status=running").split())
        assert {"target", "draft", "gateway", "prometheus"} <= services, services
        assert not {"grafana", "jaeger"} & services, "the observability profile must stay off"
        url = f"http://127.0.0.1:{ports[8000]}"
        wait_for("the gateway's /health (the target loads the model)",
                 lambda: http_get(url + "/health", timeout=5)[0] == 200, READY_TIMEOUT_S)
        yield {"url": url, "prometheus": f"http://127.0.0.1:{ports[9090]}", "compose": compose,
               "t_up": t0}
    except BaseException:
        print(compose("logs", "--no-color", "--tail", "60", check=False)[-8000:])
        raise
    finally:
        compose("down", "-v", "--remove-orphans", "-t", "40", check=False)


def test_stack_answers_openai_and_is_scraped(stack):
    from openai import OpenAI

    client = OpenAI(base_url=stack["url"] + "/v1", api_key="unused", timeout=300, max_retries=0)
    t_first = time.monotonic()
    r = client.chat.completions.create(
        model=MODEL, max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    answered = time.monotonic()
    print(f"[docker] compose up -> first answer: {answered - stack['t_up']:.0f} s "
          f"(that request: {answered - t_first:.1f} s)")
    text = r.choices[0].message.content
    print(f"[docker] answer: {text!r}")
    assert r.model == MODEL
    assert r.choices[0].finish_reason in ("stop", "length")
    assert "Paris" in text
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0

    # The same greedy request again gives the same text (speculation changes nothing), and a
    # streamed completion with explicit n-gram speculation goes through the draft service.
    again = client.chat.completions.create(
        model=MODEL, max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert again.choices[0].message.content == text
    chunks = list(client.completions.create(
        model=MODEL, prompt="The cat sat on the mat. The cat sat on the", max_tokens=16,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"speculation": {"drafter": "lookup", "tree": "4,1,1"}}))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    status, body = http_get(stack["url"] + "/metrics")
    assert status == 200
    metrics = body.decode()
    assert "specgrove:" in metrics
    lookup_drafts = [line for line in metrics.splitlines()
                     if line.startswith("specgrove:spec_decode_num_drafts") and 'drafter="lookup"' in line]
    assert lookup_drafts and float(lookup_drafts[0].split()[-1]) > 0, lookup_drafts

    # Prometheus (Debian's package, in its own container) scrapes the gateway by service name.
    def query(q: str):
        status, body = http_get(stack["prometheus"] + "/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        data = json.loads(body)
        return data["data"]["result"] if status == 200 and data.get("status") == "success" else None

    up = wait_for("Prometheus to scrape the gateway",
                  lambda: [s for s in (query('up{job="specgrove-gateway"}') or []) if s["value"][1] == "1"],
                  120)
    assert up[0]["metric"]["instance"] == "gateway:8000"
    scraped = wait_for("a specgrove metric in Prometheus",
                       lambda: query('sum(specgrove:spec_decode_num_drafts_total) or '
                                     'sum({__name__=~"specgrove:spec_decode_num_drafts.*"})'), 60)
    assert float(scraped[0]["value"][1]) > 0
