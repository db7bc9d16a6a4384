"""Where the gateway finds its replicas: ``HOST:PORT`` as given, or ``dns:NAME:PORT`` for every
address a DNS name resolves to, looked up again every few seconds.

A Kubernetes headless Service resolves to one address per pod, so ``--target
dns:specgrove-target:50051`` follows a StatefulSet as it scales, restarts or moves pods: a new
address joins the pool (through its next health poll, ``gateway.replicas``), an address that
no longer resolves drains -- its sequences move to the others -- and is dropped. A failed lookup
changes nothing (a DNS hiccup is not an empty service).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable, Sequence

log = logging.getLogger("specgrove.gateway")
DNS = "dns:"


def split_host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT or dns:NAME:PORT, got {address!r}")
    return host.strip("[]"), port


def check_address(spec: str) -> str:
    """``spec`` when it is a valid replica address, else ValueError naming it."""
    split_host_port(spec.removeprefix(DNS).lstrip("/"))
    return spec


async def resolve(spec: str) -> list[str]:
    """The replica addresses a spec names now ([] when a DNS lookup fails)."""
    if not spec.startswith(DNS):
        return [spec]
    host, port = split_host_port(spec.removeprefix(DNS).lstrip("/"))
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("cannot resolve %s: %s", host, exc)
        return []
    ips = sorted({info[4][0] for info in infos})
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]


async def resolve_all(specs: Sequence[str]) -> dict[str, str | None]:
    """Every replica address the specs name now -> the name its TLS certificate must carry
    (the DNS name for a ``dns:`` address, whose replicas are dialled by IP; else None)."""
    found: dict[str, str | None] = {}
    for spec in specs:
        name = split_host_port(spec.removeprefix(DNS).lstrip("/"))[0] if spec.startswith(DNS) else None
        for address in await resolve(spec):
            found.setdefault(address, name)
    return found


async def refresh(pool, specs: Sequence[str], connect: Callable[[str, str | None], object]) -> None:
    """Make ``pool``'s replicas the ones ``specs`` name now (nothing to do without ``dns:``)."""
    if not any(s.startswith(DNS) for s in specs):
        return
    found = await resolve_all(specs)
    if not found:
        return
    known = {r.address for r in pool.replicas}
    for address, name in found.items():
        if address not in known:
            log.info("replica %s found", address)
            pool.add(address, connect(address, name))
    for replica in pool.replicas:
        replica.gone = replica.address not in found
