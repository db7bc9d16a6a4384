"""Mutual TLS on every gRPC port: real servers on loopback with certificates from
``specgrove.certs``. A caller with a certificate from the system's CA gets through (and the
gateway reaches the target and draft with its own); a caller without a client certificate, or
with one from another CA, cannot even complete the handshake; the service token still applies
inside TLS; ``specgrove up --tls-generate`` serves its gRPC port to its own client certificate."""
from __future__ import annotations

import asyncio
import ipaddress
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specgrove import certs
from specgrove.cli import main
from specgrove.clients import TargetClient, open_channel
from specgrove.errors import Unauthenticated, Unavailable
from specgrove.pb.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from specgrove.service import free_ports
from specgrove.tls import TlsConfig, TlsError, certifies, load
from tests.gateway_stack import running_stack
from tests.polling import wait_until

TOKEN = "tls-service-token"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two unrelated CAs with their certificates: ``ours`` (the system's) and ``theirs``."""
    made = {}
    for name in ("ours", "theirs"):
        d = tmp_path_factory.mktemp(f"pki-{name}")
        made[name] = certs.generate(d, ["127.0.0.1"])
    return made


@pytest.fixture(scope="module")
def stack(tiny_dirs, pki):
    with running_stack(tiny_dirs["llama"], tiny_dirs["draft"], service_token=TOKEN,
                       tls=pki["ours"].node) as s:
        yield s


def _generate_request(model: str) -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(model=model, prompt="the lazy dog the lazy dog", max_tokens=6,
                                       sampling=common_pb2.SamplingParams(temperature=0, top_p=1))


async def _generate(channel, model: str) -> list:
    """``channel()`` makes the channel inside the running loop (grpc.aio binds it there)."""
    async with channel() as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        return [m async for m in stub.Generate(_generate_request(model), timeout=60)]


def _health_code(channel) -> grpc.StatusCode:
    """OK when a health check on ``channel()`` got through; otherwise the status the caller saw."""
    async def main():
        async with channel() as ch:
            try:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK
    return asyncio.run(main())


def _ca_only(pki) -> grpc.ChannelCredentials:
    """Trusts the server, presents no certificate."""
    return grpc.ssl_channel_credentials(root_certificates=Path(pki["ours"].ca).read_bytes())


# --- options and certificates --------------------------------------------------------------------

def test_load_names_the_flag_and_the_path(pki, tmp_path):
    node, client = pki["ours"].node, pki["ours"].client
    assert load(None, None, None) is None and load("", "", "") is None
    assert load(node.cert, node.key, node.ca) == node
    assert load(node.cert, node.key, None) == TlsConfig(node.cert, node.key)  # TLS without client auth

    missing = tmp_path / "nowhere" / "cert.pem"
    with pytest.raises(TlsError, match=rf"^--tls-cert {re.escape(str(missing))}: cannot read it"):
        load(str(missing), node.key, node.ca)
    with pytest.raises(TlsError, match=r"^--tls-ca .*nope\.pem: cannot read it"):
        load(node.cert, node.key, str(tmp_path / "nope.pem"))
    with pytest.raises(TlsError, match=r"^--tls-cert also needs --tls-key$"):
        load(node.cert, None, None)
    with pytest.raises(TlsError, match=r"^--tls-ca also needs --tls-cert and --tls-key$"):
        load(None, None, node.ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match=r"^--tls-cert .*garbage\.pem: not a PEM certificate$"):
        load(str(garbage), node.key, None)
    with pytest.raises(TlsError, match=r"^--tls-ca .*garbage\.pem: not a PEM certificate$"):
        load(node.cert, node.key, str(garbage))
    with pytest.raises(TlsError, match=r"^--tls-key .*garbage\.pem: not an unencrypted PEM private key"):
        load(node.cert, str(garbage), None)
    with pytest.raises(TlsError, match=r"^--tls-key .*client-key\.pem is not the key of --tls-cert"):
        load(node.cert, client.key, node.ca)


@pytest.mark.parametrize("command", ["target", "draft", "gateway"])
def test_commands_refuse_a_missing_certificate_in_one_line(command, tmp_path):
    cert = tmp_path / "missing-cert.pem"
    r = CliRunner().invoke(main, [command, "--tls-cert", str(cert), "--tls-key", str(cert)])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert lines == [f"specgrove: error: --tls-cert {cert}: cannot read it (No such file or directory) "
                     "(TlsError)"], r.output


def test_up_refuses_bad_tls_options_before_starting_anything(pki, tmp_path):
    node = pki["ours"].node
    r = CliRunner().invoke(main, ["up", "--tls-generate", "--tls-cert", node.cert, "--tls-key", node.key])
    assert r.exit_code == 2 and "--tls-generate makes its own certificates" in r.output
    r = CliRunner().invoke(main, ["up", "--tls-cert", str(tmp_path / "x.pem"), "--tls-key", node.key])
    assert r.exit_code == 2 and f"--tls-cert {tmp_path / 'x.pem'}: cannot read it" in r.output
    client = pki["ours"].client  # valid, but names no host: up's gateway could never verify it
    r = CliRunner().invoke(main, ["up", "--tls-cert", client.cert, "--tls-key", client.key])
    assert r.exit_code == 2 and "does not name 127.0.0.1" in r.output


def test_generated_certificates(tmp_path):
    made = certs.generate(tmp_path, ["10.1.2.3", "gw.example", "0.0.0.0"])
    ca = x509.load_pem_x509_certificate(Path(made.ca).read_bytes())
    node = x509.load_pem_x509_certificate(Path(made.node.cert).read_bytes())
    client = x509.load_pem_x509_certificate(Path(made.client.cert).read_bytes())
    for leaf in (node, client):
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "gw.example", socket.gethostname()} <= set(sans.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")} == set(
        sans.get_values_for_type(x509.IPAddress))
    eku = lambda c: set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)  # noqa: E731
    assert eku(node) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert eku(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    # The CA's key was never written: no more certificates can be made for these services.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.pem", "client-key.pem", "client.pem", "node-key.pem", "node.pem"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tmp_path.iterdir())
    assert load(made.node.cert, made.node.key, made.node.ca) == made.node
    assert all(certifies(made.node, h) for h in ("127.0.0.1", "10.1.2.3", "LOCALHOST", "gw.example"))
    assert not certifies(made.node, "10.9.9.9") and not certifies(made.client, "127.0.0.1")

    with certs.temporary(["127.0.0.1"]) as tmp:
        assert stat.S_IMODE(tmp.directory.stat().st_mode) == 0o700
    assert not tmp.directory.exists()


# --- real servers ------------------------------------------------------------------------------

def test_gateway_serves_a_caller_with_a_client_certificate(stack, pki):
    # The gateway in turn reaches the target and draft over mutual TLS with the service token.
    msgs = asyncio.run(_generate(lambda: open_channel(stack["grpc"], pki["ours"].client), stack["model"]))
    assert sum(len(m.token_ids) for m in msgs) == 6 and msgs[-1].finish_reason == "length"
    assert msgs[-1].speculation.steps >= 1


@pytest.mark.parametrize("port", ["grpc", "target", "draft"])
def test_callers_without_a_client_certificate_are_refused(stack, pki, port):
    address = stack[port]
    assert _health_code(lambda: open_channel(address, pki["ours"].client)) == grpc.StatusCode.OK  # control
    # Even health is closed: the handshake fails before any call is read.
    refused = grpc.StatusCode.UNAVAILABLE
    assert _health_code(lambda: grpc.aio.secure_channel(address, _ca_only(pki))) == refused
    assert _health_code(lambda: grpc.aio.insecure_channel(address)) == refused


@pytest.mark.parametrize("port", ["grpc", "target", "draft"])
def test_a_certificate_from_another_ca_is_refused(stack, pki, port):
    theirs = pki["theirs"].client
    impostor = TlsConfig(theirs.cert, theirs.key, pki["ours"].ca)  # trusts the server, wrong CA
    assert _health_code(lambda: open_channel(stack[port], impostor)) == grpc.StatusCode.UNAVAILABLE


def test_the_gateway_refuses_a_generate_without_a_client_certificate(stack, pki):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_generate(lambda: grpc.aio.secure_channel(stack["grpc"], _ca_only(pki)), stack["model"]))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_service_token_still_applies_inside_tls(stack, pki):
    async def main():
        async with TargetClient(stack["target"], 10, tls=pki["ours"].node) as c:
            with pytest.raises(Unauthenticated):
                await c.release([1, 2, 3])
        async with TargetClient(stack["target"], 10, token=TOKEN, tls=pki["ours"].node) as c:
            info = await c.info()
        async with TargetClient(stack["target"], 5, token=TOKEN, tls=pki["theirs"].node) as c:
            with pytest.raises(Unavailable):  # a certificate of another CA: the token is not enough
                await c.info()
        return info

    assert asyncio.run(main()).model == stack["model"]


# --- through `specgrove up` ----------------------------------------------------------------------

def test_up_generates_certificates_and_serves_grpc_over_mutual_tls(tiny_dirs, tmp_path):
    model = str(tiny_dirs["llama"])
    http, grpc_port, tport, dport = free_ports(4)
    log = tmp_path / "up.log"
    cmd = [sys.executable, "-m", "specgrove.cli", "up", "--target", model, "--drafter", "lookup=ngram",
           "--port", str(http), "--grpc-port", str(grpc_port), "--target-port", str(tport),
           "--draft-port", str(dport), "--kv-blocks", "256", "--tls-generate"]
    with open(log, "w") as err:  # a file, not a pipe: three children's logs must never block
        up = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        found = wait_until(lambda: up.poll() is None and re.search(
            r"client certificate in (\S+) \(ca\.pem", log.read_text()), 240, "up serving")
        tls_dir = Path(found.group(1))
        assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
        client = TlsConfig(str(tls_dir / "client.pem"), str(tls_dir / "client-key.pem"),
                           str(tls_dir / "ca.pem"))
        address = f"127.0.0.1:{grpc_port}"
        msgs = asyncio.run(_generate(lambda: open_channel(address, client), model))
        assert sum(len(m.token_ids) for m in msgs) == 6
        assert httpx.get(f"http://127.0.0.1:{http}/health", timeout=5).status_code == 200  # REST: plain
        ca_only = grpc.ssl_channel_credentials(root_certificates=(tls_dir / "ca.pem").read_bytes())
        for port in (grpc_port, tport, dport):
            assert _health_code(lambda: grpc.aio.secure_channel(f"127.0.0.1:{port}", ca_only)) == \
                grpc.StatusCode.UNAVAILABLE
            assert _health_code(lambda: open_channel(f"127.0.0.1:{port}", client)) == grpc.StatusCode.OK
        up.send_signal(signal.SIGTERM)
        up.wait(90)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(30)
    assert up.returncode == 0, log.read_text()[-3000:]
    assert not tls_dir.exists()  # the throwaway certificates went with `up`
