"""The gateway's catalog source fed by its control plane: a snapshot, then deltas, resumable.

Owns the wire form of the control plane's catalog stream (`GET /v1/catalog/watch`, one JSON
object per line) and `ControlPlaneCatalogSource`, which implements `CatalogSource` over it::

    {"type": "snapshot",  "epoch": E, "revision": R, "catalog": <registry.codec catalog>}
    {"type": "delta",     "epoch": E, "from": R0, "revision": R1, "delta": <delta_to_json>}
    {"type": "heartbeat", "epoch": E, "revision": R}

`epoch` names one run of the control plane: revisions are only comparable within one epoch,
so a gateway that reconnects with `?from=R&epoch=E` gets deltas only if the control plane is
the same run and still remembers R; otherwise it gets a fresh snapshot.

Last-known-good: a broken or silent stream keeps the current catalog in force (nothing is
yielded, `stale_since` is set) while the source reconnects with capped, jittered backoff. With
a `cache_file` the last catalog is written to disk and yielded first on the next start, so a
gateway restarted while its control plane is down still serves (static stability).

Imports trio, httpx and `registry`; never `federation`.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import trio

from registry import codec
from registry.diff import CatalogDelta, apply
from registry.errors import ValidationError
from registry.model import Catalog

log = logging.getLogger("isthmus.gateway.control_source")

_DECODERS = {
    "services": (codec.service_to_dict, codec.service_from_dict),
    "endpoints": (codec.endpoint_to_dict, codec.endpoint_from_dict),
    "exports": (codec.export_to_dict, codec.export_from_dict),
    "peers": (codec.peer_to_dict, codec.peer_from_dict),
}


def delta_to_json(delta: CatalogDelta) -> dict[str, Any]:
    out: dict[str, Any] = {"cluster": delta.cluster, "from": delta.from_revision, "to": delta.to_revision}
    for part, (encode, _) in _DECODERS.items():
        put = getattr(delta, f"{part}_put")
        removed = getattr(delta, f"{part}_removed")
        if put:
            out[f"{part}_put"] = [encode(put[k]) for k in sorted(put)]
        if removed:
            out[f"{part}_removed"] = sorted(removed)
    return out


def delta_from_json(data: object, path: str = "delta") -> CatalogDelta:
    if not isinstance(data, Mapping):
        raise ValidationError(f"{path}: not an object")
    kwargs: dict[str, Any] = {}
    for part, (_, decode) in _DECODERS.items():
        items = data.get(f"{part}_put", [])
        removed = data.get(f"{part}_removed", [])
        if not isinstance(items, list) or not isinstance(removed, list):
            raise ValidationError(f"{path}.{part}: expected lists")
        values = [decode(item, f"{path}.{part}_put[{i}]") for i, item in enumerate(items)]
        key = {"services": lambda v: v.key, "endpoints": lambda v: v.id, "exports": lambda v: v.service,
               "peers": lambda v: v.name}[part]  # fmt: skip
        kwargs[f"{part}_put"] = {key(v): v for v in values}
        kwargs[f"{part}_removed"] = frozenset(str(k) for k in removed)
    try:
        return CatalogDelta(cluster=str(data["cluster"]), from_revision=int(data["from"]), to_revision=int(data["to"]), **kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"{path}: {exc}") from None


class StreamState:
    """The pure part: fold stream messages into the current catalog (None: nothing to yield)."""

    def __init__(self, catalog: Catalog | None = None, epoch: str = "") -> None:
        self.catalog = catalog
        self.epoch = epoch

    def resume_query(self) -> dict[str, str]:
        if self.catalog is None or not self.epoch:
            return {}
        return {"from": str(self.catalog.revision), "epoch": self.epoch}

    def feed(self, message: object) -> Catalog | None:
        """The new catalog after `message`, or None if it changed nothing. Raises ValidationError."""
        if not isinstance(message, Mapping):
            raise ValidationError("stream message: not an object")
        kind = message.get("type")
        if kind == "heartbeat":
            return None
        if kind == "snapshot":
            catalog = codec.catalog_from_json(message.get("catalog"), "snapshot.catalog")
            self.epoch = str(message.get("epoch", ""))
            self.catalog = catalog
            return catalog
        if kind == "delta":
            if self.catalog is None or message.get("epoch") != self.epoch or message.get("from") != self.catalog.revision:
                raise ValidationError(
                    f"delta from revision {message.get('from')} does not follow revision "
                    f"{None if self.catalog is None else self.catalog.revision}"
                )
            delta = delta_from_json(message.get("delta"))
            self.catalog = apply(self.catalog, delta)
            return self.catalog
        raise ValidationError(f"stream message: unknown type {kind!r}")


class ControlPlaneCatalogSource:
    """Catalogs from the control plane at `api` (`host:port`), last-known-good on any failure."""

    def __init__(
        self,
        api: str,
        *,
        cache_file: str | Path | None = None,
        idle_timeout_s: float = 15.0,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = f"http://{api}/v1/catalog/watch"
        self.cache_file = Path(cache_file) if cache_file else None
        self.idle_timeout_s = idle_timeout_s
        self.rng = rng or random.Random()
        self.transport = transport
        self.state = StreamState()
        self.stale_since: float | None = None
        self.last_error: str | None = None

    def _load_cache(self) -> Catalog | None:
        if self.cache_file is None:
            return None
        try:
            return codec.catalog_from_json(codec.loads(self.cache_file.read_bytes(), str(self.cache_file)))
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.warning("catalog cache %s unusable: %s", self.cache_file, exc)
            return None

    async def _save_cache(self, catalog: Catalog) -> None:
        if self.cache_file is None:
            return
        path = self.cache_file
        body = codec.dumps(codec.catalog_to_json(catalog))

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(body)
            os.replace(tmp, path)

        await trio.to_thread.run_sync(write)

    async def __aiter__(self) -> AsyncIterator[Catalog]:
        cached = self._load_cache()
        if cached is not None:
            self.state = StreamState(cached, "")
            self.stale_since = trio.current_time()
            yield cached
        attempt = 0
        async with httpx.AsyncClient(transport=self.transport, timeout=httpx.Timeout(5.0, read=None)) as client:
            while True:
                try:
                    async with client.stream("GET", self.url, params=self.state.resume_query()) as response:
                        if response.status_code != 200:
                            raise ValidationError(f"{self.url}: HTTP {response.status_code}")
                        lines = response.aiter_lines().__aiter__()
                        while True:
                            with trio.fail_after(self.idle_timeout_s):
                                try:
                                    line = await lines.__anext__()
                                except StopAsyncIteration:
                                    break
                            if not line.strip():
                                continue
                            catalog = self.state.feed(json.loads(line))
                            attempt = 0
                            self.stale_since = None
                            self.last_error = None
                            if catalog is not None:
                                await self._save_cache(catalog)
                                yield catalog
                    error = "the control plane closed the stream"
                except (httpx.HTTPError, OSError) as exc:
                    error = f"{self.url}: {exc or type(exc).__name__}"
                except trio.TooSlowError:
                    error = f"{self.url}: no message for {self.idle_timeout_s:g} s"
                except (ValidationError, ValueError) as exc:
                    error = f"{self.url}: {exc}"
                    self.state = StreamState(self.state.catalog, "")  # ask for a fresh snapshot
                if self.stale_since is None:
                    self.stale_since = trio.current_time()
                if error != self.last_error:
                    log.warning("catalog stream: %s; keeping revision %s", error,
                                None if self.state.catalog is None else self.state.catalog.revision)  # fmt: skip
                self.last_error = error
                ceiling = min(5.0, 0.1 * 2 ** min(attempt, 10))
                await trio.sleep(ceiling / 2 + self.rng.random() * ceiling / 2)
                attempt += 1
