"""Throwaway certificates for ``specgrove up --tls-generate``: a private CA and two leaves.

- ``node``: presented by the target, draft and gateway as servers, and by the gateway (and
  ``up``'s health probes) as clients -- extended key usage serverAuth and clientAuth, subject
  alternative names localhost, 127.0.0.1, ::1 and the host the gateway binds;
- ``client``: clientAuth only, for callers of the gateway's gRPC port (tests, local tools).

The CA's private key is never written: once the leaves are signed nobody, ``up`` included, can
mint another certificate the children would accept. Keys are ECDSA P-256 (fast to make, and
supported by gRPC's TLS); files are 0600 in a 0700 directory that ``temporary`` removes.
"""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from specgrove.tls import TlsConfig

VALIDITY = datetime.timedelta(days=365)
CLOCK_SKEW = datetime.timedelta(minutes=5)  # valid a little before now: peers' clocks differ


@dataclass(frozen=True)
class GeneratedCerts:
    directory: Path
    ca: Path
    node: TlsConfig  # the services' certificate (server and client)
    client: TlsConfig  # a caller's certificate for the gateway's gRPC port


def san_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """localhost, the loopback addresses and ``hosts``; a wildcard bind (0.0.0.0, ::) stands
    for this machine's name, which remote callers would dial."""
    names: list[x509.GeneralName] = []
    for host in ("localhost", "127.0.0.1", "::1", *hosts):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            name = x509.DNSName(host)
        else:
            name = x509.DNSName(socket.gethostname()) if ip.is_unspecified else x509.IPAddress(ip)
        if name not in names:
            names.append(name)
    return names


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "specgrove up (throwaway)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key, now: datetime.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + VALIDITY))


def _write(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def generate(directory: Path, hosts: Iterable[str] = ()) -> GeneratedCerts:
    """Write ``ca.pem``, ``node.pem`` / ``node-key.pem`` and ``client.pem`` / ``client-key.pem``
    into ``directory`` (which must exist and should be private)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("specgrove up CA")
    ca = (_builder("specgrove up CA", ca_name, ca_key.public_key(), now)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)  # keyCertSign, cRLSign
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    ca_path = _write(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())

    def leaf(stem: str, usages: list, sans: list[x509.GeneralName]) -> TlsConfig:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (_builder(f"specgrove {stem}", ca_name, key.public_key(), now)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(True, False, False, False, True, False, False, False, False),
                                  critical=True)  # digitalSignature, keyAgreement (ECDHE)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(aki, critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_path = _write(directory / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
        key_path = _write(directory / f"{stem}-key.pem", _key_pem(key))
        return TlsConfig(str(cert_path), str(key_path), str(ca_path))

    node = leaf("node", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                san_names(hosts))
    client = leaf("client", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    return GeneratedCerts(directory, ca_path, node, client)


@contextlib.contextmanager
def temporary(hosts: Iterable[str] = ()) -> Iterator[GeneratedCerts]:
    """Certificates in a fresh private directory (0700, from ``mkdtemp``), removed on exit."""
    directory = Path(tempfile.mkdtemp(prefix="specgrove-tls-"))
    try:
        yield generate(directory, hosts)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
