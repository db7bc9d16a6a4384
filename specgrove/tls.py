"""Transport security for every gRPC server and client of the system: TLS, mutual with a CA.

One ``TlsConfig`` per process, from ``--tls-cert``, ``--tls-key`` and ``--tls-ca``:

- as a server, the process presents ``cert`` / ``key``; with ``ca`` it also requires every
  caller to present a certificate signed by that CA (mutual TLS), so a local process without
  one cannot even complete the handshake -- health probes included;
- as a client (the gateway towards the target and draft, ``up`` probing its children) it
  verifies the server against ``ca`` (the system roots without one) and presents the same
  ``cert`` / ``key`` as its client certificate. One certificate per process therefore serves
  both ways (extended key usage serverAuth and clientAuth, or none).

``load`` reads and checks the files once, at start-up, so that a missing file, a file that is
not PEM or a key that does not belong to the certificate is one clear line naming the flag and
the path instead of a handshake failure later. Without any of the three options there is no
``TlsConfig`` and every port stays plaintext (loopback by default), as before. TLS and the
service token (``specgrove.auth``) are independent: metadata travels inside the TLS session.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

FLAGS = {"cert": "--tls-cert", "key": "--tls-key", "ca": "--tls-ca"}


class TlsError(ValueError):
    """A TLS option that cannot be used: the message names the flag and the path."""


@dataclass(frozen=True)
class TlsConfig:
    cert: str  # PEM certificate (chain) this process presents, as a server and as a client
    key: str  # PEM private key of ``cert``
    ca: str = ""  # PEM CA bundle: verifies peers; on a server it makes client certificates required

    @property
    def mutual(self) -> bool:
        return bool(self.ca)

    def paths(self) -> dict[str, str]:
        """The set options, by name (``cert``, ``key``, ``ca``)."""
        return {name: getattr(self, name) for name in FLAGS if getattr(self, name)}

    def cli_args(self) -> list[str]:
        """The same configuration as command-line options (for ``up``'s children)."""
        return [x for name, path in self.paths().items()
                for x in (FLAGS[name], str(Path(path).resolve()))]

    def _read(self) -> dict[str, bytes]:
        return {name: _read(name, path) for name, path in self.paths().items()}

    def server_credentials(self) -> grpc.ServerCredentials:
        pem = self._read()
        return grpc.ssl_server_credentials(
            [(pem["key"], pem["cert"])], root_certificates=pem.get("ca"),
            require_client_auth=self.mutual)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        pem = self._read()
        return grpc.ssl_channel_credentials(root_certificates=pem.get("ca"),
                                            private_key=pem["key"], certificate_chain=pem["cert"])


def load(cert: str | None, key: str | None, ca: str | None) -> TlsConfig | None:
    """The TLS configuration of the three options, checked; None when none is given."""
    given = {"cert": cert or "", "key": key or "", "ca": ca or ""}
    if not any(given.values()):
        return None
    # Every process that takes these options serves gRPC: it cannot serve TLS without its own
    # certificate and key, whatever CA it trusts.
    if not (given["cert"] and given["key"]):
        missing = [FLAGS[n] for n in ("cert", "key") if not given[n]]
        present = [FLAGS[n] for n in FLAGS if given[n]]
        raise TlsError(f"{' and '.join(present)} also need{'s' if len(present) == 1 else ''} "
                       f"{' and '.join(missing)}")
    cfg = TlsConfig(**given)
    _check(cfg, cfg._read())
    return cfg


def certifies(cfg: TlsConfig, host: str) -> bool:
    """Whether ``cfg.cert`` names ``host`` (an IP address, or a DNS name matched exactly) among its
    subject alternative names, as a client dialling ``host`` will require."""
    import ipaddress

    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(_read("cert", cfg.cert))[0]
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in sans.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host.lower() in (n.lower() for n in sans.get_values_for_type(x509.DNSName))


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{FLAGS[name]} {path}: cannot read it ({exc.strerror or exc})") from None


def _check(cfg: TlsConfig, pem: dict[str, bytes]) -> None:
    """Parse what was read: gRPC would only fail at the first handshake, and less clearly."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def certs(name: str) -> list:
        try:
            found = x509.load_pem_x509_certificates(pem[name])
        except ValueError:
            found = []
        if not found:
            raise TlsError(f"{FLAGS[name]} {cfg.paths()[name]}: not a PEM certificate")
        return found

    leaf = certs("cert")[0]
    if "ca" in pem:
        certs("ca")
    try:
        key = serialization.load_pem_private_key(pem["key"], password=None)
    except (ValueError, TypeError) as exc:  # TypeError: encrypted, and no password to give
        raise TlsError(f"--tls-key {cfg.key}: not an unencrypted PEM private key ({exc})") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise TlsError(f"--tls-key {cfg.key} is not the key of --tls-cert {cfg.cert}")
