"""grpc.health.v1 ``Check`` over mutual TLS, for Kubernetes exec probes.

The kubelet's native gRPC probe speaks plaintext only, and a service started with ``--tls-ca``
refuses any caller without a certificate its CA signed, health checks included. This probe runs
inside the pod with the pod's own certificate: it dials the service on loopback, verifies the
server against the CA under a name the certificate itself carries (the names are those of the
Services that callers dial, not 127.0.0.1), and exits 0 only for SERVING.

    python grpc_health_check.py PORT [SERVICE]      (files: $SPECGROVE_PROBE_TLS_DIR)
"""
from __future__ import annotations

import os
import sys

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

TLS_DIR = os.environ.get("SPECGROVE_PROBE_TLS_DIR", "/etc/specgrove/tls")
TIMEOUT_S = 3.0


def dns_name(cert_pem: bytes) -> str | None:
    """The first DNS name in the certificate's subject alternative names."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = sans.get_values_for_type(x509.DNSName)
    return names[0] if names else None


def check(port: int, service: str, tls_dir: str = TLS_DIR) -> str:
    """The service's health status name (SERVING, NOT_SERVING, ...)."""
    def read(name: str) -> bytes:
        with open(os.path.join(tls_dir, name), "rb") as f:
            return f.read()

    cert, key, ca = read("tls.crt"), read("tls.key"), read("ca.crt")
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    name = dns_name(cert)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        status = check(int(argv[1]), argv[2] if len(argv) == 3 else "")
    except (grpc.RpcError, OSError, ValueError) as exc:
        print(f"health check failed: {exc}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
