"""``specgrove drafters list|load|unload --url``: the gateway's REST drafter admin from a shell."""
from __future__ import annotations

import json

import click


def _call(method: str, url: str, api_key: str | None, path: str, body: dict | None = None) -> dict:
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.request(method, url.rstrip("/") + path, json=body, headers=headers, timeout=900)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code >= 400:
        message = data.get("error", {}).get("message") if isinstance(data, dict) else None
        raise click.ClickException(f"{r.status_code}: {message or r.text}")
    return data


def list_drafters(url: str, api_key: str | None) -> None:
    for d in _call("GET", url, api_key, "/v1/drafters")["data"]:
        default = " (default)" if d["is_default"] else ""
        click.echo(f"{d['name']}{default}\t{d['spec']}")


def load_drafter(url: str, api_key: str | None, name: str, spec: str, make_default: bool) -> None:
    info = _call("POST", url, api_key, "/v1/drafters", {"name": name, "spec": spec, "make_default": make_default})
    click.echo(json.dumps(info))


def unload_drafter(url: str, api_key: str | None, name: str) -> None:
    _call("DELETE", url, api_key, f"/v1/drafters/{name}")
    click.echo(f"unloaded {name}")
