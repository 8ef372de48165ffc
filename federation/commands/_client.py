"""Calling a cluster's control-plane API from the command line (loopback HTTP, one line per error)."""

from __future__ import annotations

from typing import Any

import httpx

from federation.config import ClusterConfig
from federation.errors import FederationError


class ControlPlaneUnreachable(FederationError):
    """The control plane named by the config does not answer."""


class ControlPlaneRefused(FederationError):
    """The control plane answered with an error; the message is its one line."""


def call(config: ClusterConfig, method: str, path: str, *, json: Any = None, timeout_s: float = 30.0) -> Any:
    url = f"http://{config.control_api}{path}"
    try:
        response = httpx.request(method, url, json=json, timeout=timeout_s)
    except httpx.TransportError as exc:
        where = config.path or "the config"
        raise ControlPlaneUnreachable(
            f"control plane of {config.cluster.name} at {config.control_api} is not reachable ({exc or type(exc).__name__}); "
            f"is `isthmus control --config {where}` running?"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text.strip()[:300]}
    if response.status_code != 200:
        raise ControlPlaneRefused(str(body.get("error") if isinstance(body, dict) else body))
    return body
