"""One cluster's control plane: registry follower, catalog streams, federation with every peer.

`serve_control_plane(config, backend)` (and `isthmus control --config cluster.toml`) runs:

- a follower of this cluster's catalog in the registry (`registry.url.serve_followed_catalog`:
  last-known-good through backend outages); every local catalog is published to the
  `ExportHub` (what peers may import) and merged with the trusted imports into the
  `CatalogHub` (what this cluster's gateways stream from `GET /v1/catalog/watch`), with the
  cluster config's `[policies."svc"]` and `[[routes."svc"]]` as defaults under the policies and
  route rules written to the registry (the API's `/v1/services/NAME.NS/policy|routes`, and so
  `isthmus service policy|routes` and Terraform's `isthmus_route_rules`), which win per service;
- one `PeerImport` per peer in the registry (`/isthmus/<cluster>/peers/<name>`), started and
  stopped as peers are registered and removed; trusted imports are persisted under
  `<data_dir>/imports/<peer>.json` and served, stale, after a restart until the peer confirms them;
- the local HTTP API (hypercorn, trio worker) on `control.api`, loopback only (`federation.api`);
- one probe per peer (every `probe_interval_s`, 1 s by default): up, round trip, clock skew and the
  identity the peer presented (`isthmus_peer_probe_*`, `isthmus cluster list/check`);
- one summary fetch per peer (every `summary_interval_s`, 2 s by default): the peer's dashboard
  summary (`GET /v1/federation/summary`), checked and handed to the dashboard's model `mesh`
  (`federation.dashboard.summary`); a peer that does not answer or lies is shown as such.

One crossing per cluster. Which federation call takes which path, and why:

| call (caller -> callee)                      | path                                              |
| -------------------------------------------- | ------------------------------------------------- |
| `GET /v1/federation/watch` (the import)      | the peer's east-west gateway (`Peer.gateway`)     |
| `GET /v1/federation/probe`                   | the peer's east-west gateway                      |
| `GET /v1/federation/export` (a snapshot)     | the peer's east-west gateway                      |
| `GET /v1/federation/summary` (the dashboard) | the peer's east-west gateway                      |
| `POST /v1/federation/redeem` (peering)       | the issuer's bootstrap listener (`token.control`) |

Through the gateway: mutual TLS with this cluster's identity (`<pki>/clusters/<c>/identities/control`,
else `gateway`), SNI and `Host` `federation.isthmus`; the gateway verifies the caller's SPIFFE ID
and forwards the call over loopback to its control plane's API with `x-isthmus-peer-identity:
<spiffe id>` and `x-isthmus-forward-secret: <data_dir>/control/forward.secret`
(`gateway.federation_route`); the API accepts a forwarded identity (that header or
`x-forwarded-client-cert: URI=...`) only with that secret, so only its own gateway can assert one.
The caller checks that the gateway's identity belongs to the peer cluster.

The bootstrap listener on `control.federation` (default: the API port + 1) serves the peering
redeem only: when a cluster redeems a token, the issuer's gateway does not trust it yet (the two
clusters may have different roots and the gateway requires a client certificate), so the redeemer
calls the issuer's control plane directly over TLS, authenticated by the token's one-time secret
(the issuer by the bundle in the token). The listener relays each connection to the local API and
attaches the verified identity, if any, in-process (`crossings`, keyed by the relay's local port);
the API refuses every other federation call arriving that way ("through the east-west gateway").

Peering (`register_with_token`): the redeeming side verifies the token, then calls the issuer's
`POST /v1/federation/redeem`, and both sides store the other as a `Peer` with its trust bundle.
Mutual TLS between them then trusts the union of the local bundle and the peers' bundles (the
gateways load the peers' bundles from the catalog they stream).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import random
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from certs import tls as certs_tls
from certs.errors import CertsError
from certs.store import Identity, TrustBundle, load_bundle, load_identity
from federation import peering
from federation.catalog_stream import CatalogHub, ExportHub
from federation.config import ClusterConfig
from federation.dashboard.model import MeshModel
from federation.dashboard.summary import MAX_SUMMARY_BYTES
from federation.errors import ConfigError, FederationError
from federation.imports import ExportView, PeerContext, merge
from federation.metrics import PlaneMetrics, peer_readings
from federation.peer_import import PeerImport, Stream, StreamBroken
from federation.sync import SyncState
from gateway.authz import parse_source
from gateway.errors import ConfigInvalid
from gateway.request_policy import validate_policy, validate_routes
from registry import codec
from registry.backend import Backend
from registry.errors import ValidationError
from registry.model import Catalog, Peer, Policy, RouteRules, parse_host_port
from registry.store import Store
from registry.url import CatalogView, serve_followed_catalog

log = logging.getLogger("isthmus.federation.control")

FORWARD_SECRET_HEADER = "x-isthmus-forward-secret"
XFCC_HEADER = "x-forwarded-client-cert"
PEER_IDENTITY_HEADER = "x-isthmus-peer-identity"  # what the east-west gateway attaches to requests
ALPN = ("http/1.1",)
# The reserved authority of federation calls on a peer's east-west listener (`gateway.federation_route`).
FEDERATION_AUTHORITY = "federation.isthmus"
# How a call reached the API: from this host, relayed by the bootstrap listener, or forwarded by our gateway.
VIA_LOCAL, VIA_CROSSING, VIA_GATEWAY = "local", "crossing", "gateway"


class PeeringFailed(FederationError):
    """Registering with a peer did not complete: the message says where and why."""


def federation_address(config: ClusterConfig) -> str:
    """`[control] federation = "host:port"`, else the API's host with the next port (see `ClusterConfig`)."""
    return config.control_federation


def load_cluster_identity(config: ClusterConfig) -> Identity:
    try:
        return load_identity(config.pki_dir, config.cluster.name, "control")
    except CertsError:
        return load_identity(config.pki_dir, config.cluster.name, "gateway")


def forward_secret(data_dir: Path) -> str:
    """The secret the local gateway sends with forwarded federation calls (created on first use)."""
    path = data_dir / "control" / "forward.secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_urlsafe(32)
        peering.write_private(path, value + "\n")
        return value


@contextlib.contextmanager
def _ledger_lock(data_dir: Path):
    path = data_dir / "peering" / "tokens.lock"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def issue_peering_token(config: ClusterConfig, peer: str, ttl_s: float, *, now: float | None = None) -> tuple[str, peering.PeeringToken]:
    """Sign a token for `peer` with this cluster's CA and record its secret in the data dir."""
    if peer == config.cluster.name:
        raise PeeringFailed(f"--for: {peer!r} is this cluster itself")
    signer = peering.load_signer(config.pki_dir, config.cluster.name)
    now = time.time() if now is None else now
    text, token = peering.issue_token(
        cluster=config.cluster.name,
        region=config.cluster.region,
        zones=config.cluster.zones,
        gateway=config.eastwest,
        control=federation_address(config),
        trust_domain=config.trust_domain,
        bundle_pem=signer.bundle_pem,
        signer_pem=signer.cert_pem,
        signer_key=signer.key,
        peer=peer,
        ttl_s=ttl_s,
        now=now,
        rng=random.SystemRandom(),
    )
    ledger = peering.TokenLedger(config.data_dir)
    with _ledger_lock(config.data_dir):
        ledger.save(peering.record_issued(ledger.load(), token, now=now))
    return text, token


def redeem_secret(config: ClusterConfig, *, secret: str, peer: str, now: float | None = None) -> None:
    ledger = peering.TokenLedger(config.data_dir)
    with _ledger_lock(config.data_dir):
        ledger.save(peering.redeem(ledger.load(), secret=secret, peer=peer, now=time.time() if now is None else now))


@attrs.define
class Probe:
    rtt_s: float | None = None
    skew_s: float | None = None
    identity: str | None = None
    peer_cert_not_after: float | None = None
    error: str | None = None
    at: float | None = None


def _ssl_of(response: httpx.Response) -> Any:
    stream = response.extensions.get("network_stream")
    return None if stream is None else stream.get_extra_info("ssl_object")


def _identity_of(ssl_object: Any) -> tuple[str | None, float | None]:
    if ssl_object is None:
        return None, None
    try:
        spiffe = certs_tls.peer_identity(ssl_object)
    except CertsError as exc:
        raise StreamBroken(f"the peer's certificate was refused: {exc}") from None
    not_after = None
    chain = certs_tls.verified_chain(ssl_object)
    if chain:
        not_after = chain[0].not_valid_after_utc.timestamp()
    return str(spiffe), not_after


class ControlPlane:
    """The state and tasks of one cluster's control plane (see the module docstring)."""

    def __init__(
        self,
        config: ClusterConfig,
        backend: Backend,
        *,
        identity: Identity | None = None,
        bundle: TrustBundle | None = None,
        rng: random.Random | None = None,
        heartbeat_s: float = 5.0,
        idle_timeout_s: float = 15.0,
        probe_interval_s: float = 1.0,
        summary_interval_s: float = 2.0,
    ) -> None:
        self.config = config
        self.name = config.cluster.name
        self.backend = backend
        self.store = Store(backend)
        self.identity = identity or load_cluster_identity(config)
        self.bundle = bundle or load_bundle(config.pki_dir)
        self.rng = rng or random.Random()
        self.heartbeat_s = heartbeat_s
        self.idle_timeout_s = idle_timeout_s
        self.probe_interval_s = probe_interval_s
        self.summary_interval_s = summary_interval_s
        self.mesh = MeshModel()  # the dashboard's model (`federation.dashboard`), peers' summaries included
        self.federation_address = federation_address(config)
        self.forward_secret = forward_secret(config.data_dir)
        self.local: Catalog = Catalog(self.name, 0)
        self.local_stale: str = ""
        self.local_stale_since: float | None = None
        self.exports = ExportHub(self.name)
        self.catalogs = CatalogHub(self.name)
        self.imports: dict[str, PeerImport] = {}
        self.probes: dict[str, Probe] = {}
        self._import_scopes: dict[str, trio.CancelScope] = {}
        self._peer_records: dict[str, Peer] = {}
        self._started_for: dict[str, Peer] = {}
        self._published_views: dict[str, ExportView | None] = {}
        self.crossings: dict[int, str | None] = {}
        self.refused_crossings: dict[str, int] = {}
        # Federation calls served, by how they arrived and their path (`/v1/status`).
        self.federation_calls: dict[tuple[str, str], int] = {}
        self._nursery: trio.Nursery | None = None
        self._dirty: set[str] = set()
        self._dirty_event = trio.Event()
        self.api_url = f"http://{config.control_api}"
        self._server_context = self._make_server_context()
        self.metrics = PlaneMetrics(self)
        self.default_policies, self.default_routes = config_policies(config)

    # -- TLS --------------------------------------------------------------------------------

    def _peer_bundles(self) -> str:
        return "".join(p.trust_bundle_pem for p in self._peer_records.values() if p.trust_bundle_pem)

    def _make_server_context(self) -> ssl.SSLContext:
        # Optional client certificates: a cluster redeeming a token may not be trusted yet; every
        # federation call but the redeem requires a verified identity (checked by the API).
        context = certs_tls.server_context(self.identity, self.bundle, alpn=ALPN, require_client_cert=False)
        extra = self._peer_bundles()
        if extra:
            context.load_verify_locations(cadata=extra)
        return context

    def client_context(self, *, present_identity: bool = True, bundle_pem: str | None = None) -> ssl.SSLContext:
        context = certs_tls.client_context(self.identity if present_identity else None, self.bundle, alpn=ALPN)
        extra = (bundle_pem or "") + self._peer_bundles()
        if extra:
            context.load_verify_locations(cadata=extra)
        return context

    # -- catalogs ---------------------------------------------------------------------------

    def trusted_views(self) -> list[ExportView]:
        views = []
        for name, imp in self.imports.items():
            if name in self._peer_records:
                view = imp.sync.trusted_view()
                if view is not None:
                    views.append(view)
        return views

    def republish(self) -> None:
        merged = merge(self.local, self.trusted_views())
        # The cluster config's `[policies]` and `[routes]` are defaults; values written to the
        # registry (API, CLI, Terraform) win, service by service.
        self.catalogs.publish(attrs.evolve(
            merged,
            policies={**self.default_policies, **self.local.policies},
            routes={**self.default_routes, **self.local.routes},
        ))

    async def _on_local(self, view: CatalogView) -> None:
        self.local_stale = view.reason if view.stale else ""
        if view.catalog is None:
            return
        if view.stale and self.local_stale_since is None:
            self.local_stale_since = trio.current_time()
        elif not view.stale:
            self.local_stale_since = None
        if view.catalog is not self.local:
            self.local = view.catalog
            self.exports.publish(view.catalog, at=time.time())
            self._reconcile_peers()
        self.republish()

    def _reconcile_peers(self) -> None:
        wanted = dict(self.local.peers)
        if wanted != self._peer_records:
            self._peer_records = wanted
            self._server_context = self._make_server_context()
        for name in list(self._import_scopes):
            if name not in wanted:
                log.info("peer %s removed: stopping its import", name)
                self._import_scopes.pop(name).cancel()
                self.imports.pop(name, None)
                self._published_views.pop(name, None)
                self.probes.pop(name, None)
                self.mesh.forget_peers(wanted)
                with contextlib.suppress(FileNotFoundError):
                    self._import_file(name).unlink()
        for name, peer in wanted.items():
            if name in self._import_scopes and self._started_for.get(name) == peer:
                continue
            if name in self._import_scopes:
                self._import_scopes.pop(name).cancel()
            if self._nursery is not None:
                self._started_for[name] = peer
                self._start_import(peer)

    def _context(self, peer: Peer) -> PeerContext:
        return PeerContext.of(peer, local=self.name, trust_domain=self.config.trust_domain)

    def _start_import(self, peer: Peer) -> None:
        assert self._nursery is not None
        initial = self._load_import(peer.name)
        imp = PeerImport(
            self._context(peer),
            lambda from_revision, peer=peer: self._open_import_stream(peer, from_revision),
            on_change=self._on_import_change,
            on_latency=lambda peer, seconds: self.metrics.sync_latency.labels(peer).observe(seconds),
            rng=self.rng,
            idle_timeout_s=self.idle_timeout_s,
            initial=initial,
        )
        self.imports[peer.name] = imp
        scope = trio.CancelScope()
        self._import_scopes[peer.name] = scope

        async def run() -> None:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(imp.serve)
                    nursery.start_soon(self._serve_probe, peer)
                    nursery.start_soon(self._serve_peer_summary, peer)

        self._nursery.start_soon(run)

    def _on_import_change(self, imp: PeerImport) -> None:
        if self.imports.get(imp.sync.peer) is not imp:
            return
        view = imp.sync.trusted_view()
        if self._published_views.get(imp.sync.peer) is view:
            return  # a state change (connected, heartbeat, stale): what gateways see is unchanged
        self._published_views[imp.sync.peer] = view
        self.republish()
        self._dirty.add(imp.sync.peer)
        self._dirty_event.set()

    # -- persisted imports --------------------------------------------------------------------

    def _import_file(self, peer: str) -> Path:
        return self.config.data_dir / "imports" / f"{peer}.json"

    def _load_import(self, peer: str) -> ExportView | None:
        path = self._import_file(peer)
        try:
            data = json.loads(path.read_text())
            catalog = codec.catalog_from_json(data, str(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ValidationError) as exc:
            log.warning("peer %s: ignoring saved imports %s: %s", peer, path, exc)
            return None
        return ExportView(peer, catalog.revision, catalog.services, catalog.endpoints, catalog.exports)

    async def _serve_import_saver(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
            await trio.sleep(0.2)  # coalesce bursts of deltas into one write
            dirty, self._dirty = self._dirty, set()
            for name in dirty:
                imp = self.imports.get(name)
                view = None if imp is None else imp.sync.trusted_view()
                if view is None:
                    continue
                catalog = Catalog(name, view.revision, view.services, view.endpoints, view.exports)
                await trio.to_thread.run_sync(_write_catalog, self._import_file(name), catalog)

    # -- talking to peers ---------------------------------------------------------------------

    def _via_gateway(self, peer: Peer, path: str) -> tuple[str, dict[str, Any]]:
        """The URL and request options of a federation call to `peer` through its east-west gateway."""
        return f"https://{peer.gateway}{path}", {
            "headers": {"host": FEDERATION_AUTHORITY},
            "extensions": {"sni_hostname": FEDERATION_AUTHORITY},
        }

    def _check_gateway_identity(self, peer: Peer, identity: str | None) -> None:
        expected = f"spiffe://{self.config.trust_domain}/cluster/{peer.name}/"
        if identity is None or not identity.startswith(expected):
            raise StreamBroken(f"the gateway at {peer.gateway} presented {identity}, not an identity of cluster {peer.name}")

    @contextlib.asynccontextmanager
    async def _open_import_stream(self, peer: Peer, from_revision: int) -> AsyncIterator[Stream]:
        url, options = self._via_gateway(peer, "/v1/federation/watch")
        try:
            async with httpx.AsyncClient(verify=self.client_context(), timeout=httpx.Timeout(5.0, read=None)) as client:
                async with client.stream("GET", url, params={"peer": self.name, "from": from_revision}, **options) as response:
                    sender, _ = _identity_of(_ssl_of(response))
                    self._check_gateway_identity(peer, sender)
                    if response.status_code != 200:
                        body = (await response.aread()).decode("utf-8", "replace")[:200]
                        raise StreamBroken(f"{url}: HTTP {response.status_code}: {body.strip()}")
                    yield Stream(sender, _json_lines(response))
        except httpx.HTTPError as exc:
            raise StreamBroken(f"{url}: {_describe(exc)}") from None

    async def _serve_probe(self, peer: Peer) -> None:
        await trio.sleep(self.rng.random() * 0.5)
        while True:
            # One kept-alive connection through the peer's gateway: the round trip measured is the
            # crossing's, not a TLS handshake's (a failed probe starts a new connection).
            async with httpx.AsyncClient(verify=self.client_context(), timeout=5.0) as client:
                while True:
                    probe = await self.probe(peer, client)
                    previous = self.probes.get(peer.name)
                    self.probes[peer.name] = probe
                    imp = self.imports.get(peer.name)
                    if not probe.error and (previous is None or previous.error) and imp is not None:
                        imp.wake()  # the peer answers (again): reconnect its import now, not after the backoff
                    await trio.sleep(self.probe_interval_s)
                    if probe.error:
                        break

    async def probe(self, peer: Peer, client: httpx.AsyncClient | None = None) -> Probe:
        """One round trip to the peer's control plane through its gateway."""
        url, options = self._via_gateway(peer, "/v1/federation/probe")
        try:
            async with contextlib.AsyncExitStack() as stack:
                if client is None:
                    client = await stack.enter_async_context(httpx.AsyncClient(verify=self.client_context(), timeout=5.0))
                start = trio.current_time()
                before = time.time()
                response = await client.get(url, **options)
                rtt = trio.current_time() - start
                after = time.time()
                identity, not_after = _identity_of(_ssl_of(response))
                self._check_gateway_identity(peer, identity)
                if response.status_code != 200:
                    return Probe(rtt, None, identity, not_after, f"HTTP {response.status_code}: {response.text[:200]}", after)
                remote = float(response.json().get("time", 0))
                return Probe(rtt, remote - (before + after) / 2, identity, not_after, None, after)
        except (httpx.HTTPError, StreamBroken, ValueError) as exc:
            return Probe(error=f"{url}: {_describe(exc)}", at=time.time())

    # -- dashboard summaries (issue 8): this cluster's for a linked peer, and each peer's for our dashboard --

    def dashboard_summary(self, peer: str) -> dict[str, Any]:
        """What `peer`'s dashboard may show of this cluster: only the services exported to it."""
        cluster = self.config.cluster
        return self.mesh.summary(time.time(), cluster=self.name, region=cluster.region, zones=cluster.zones,
                                 services=self.exports.view(peer).services, viewer=peer)  # fmt: skip

    async def _serve_peer_summary(self, peer: Peer) -> None:
        await trio.sleep(self.rng.random() * 0.5)
        while True:  # one kept-alive connection through the peer's gateway, renewed after a failure
            async with httpx.AsyncClient(verify=self.client_context(), timeout=5.0, trust_env=False) as client:
                while True:
                    answered = await self.fetch_peer_summary(peer, client)
                    await trio.sleep(self.summary_interval_s)
                    if not answered:
                        break

    async def fetch_peer_summary(self, peer: Peer, client: httpx.AsyncClient) -> bool:
        """Fetch `peer`'s summary through its gateway into `mesh`; whether it answered. Never raises for
        what the peer does: no answer, an error status, too many bytes or a lie are recorded and logged once."""
        url, options = self._via_gateway(peer, "/v1/federation/summary")
        body, error = b"", ""
        try:
            with trio.fail_after(5.0):
                async with client.stream("GET", url, params={"peer": self.name}, **options) as response:
                    identity, _ = _identity_of(_ssl_of(response))
                    self._check_gateway_identity(peer, identity)
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_SUMMARY_BYTES:
                            break  # decode_summary refuses it, naming the size
                    if response.status_code != 200:
                        error = f"HTTP {response.status_code}: {_error_text(body)}"
        except (httpx.HTTPError, OSError, StreamBroken, trio.TooSlowError) as exc:
            error = f"{url}: {_describe(exc) if not isinstance(exc, trio.TooSlowError) else 'no answer within 5 s'}"
        if error:
            line = self.mesh.set_peer_failure(peer.name, error, time.time())
        else:
            line = self.mesh.set_peer_summary(peer.name, body, time.time())
        if line:  # the peer's state changed: a silence or a lie is worth a warning, an answer again a note
            log.log(logging.INFO if self.mesh.peers[peer.name].state == "ok" else logging.WARNING, "dashboard: %s", line)
        return not error

    async def register_with_token(self, text: str) -> dict[str, Any]:
        """Redeem a peering token issued by another cluster (this cluster is the one it is for)."""
        token = peering.verify_token(text, expect_peer=self.name, now=time.time())
        if token.trust_domain != self.config.trust_domain:
            raise PeeringFailed(f"the token is from trust domain {token.trust_domain}, this mesh is {self.config.trust_domain}")
        if token.cluster in self._peer_records:
            raise PeeringFailed(f"cluster {token.cluster} is already a peer (remove it first: isthmus cluster remove {token.cluster})")
        url = f"https://{token.control}/v1/federation/redeem"
        body = {
            "secret": token.secret,
            "cluster": self.name,
            "region": self.config.cluster.region,
            "zones": list(self.config.cluster.zones),
            "gateway": self.config.eastwest,
            "control": self.federation_address,
            "bundle": self.bundle.pem,
        }
        context = certs_tls.client_context(None, _bundle_of(token.bundle_pem, token.trust_domain), alpn=ALPN)
        try:
            async with httpx.AsyncClient(verify=context, timeout=10.0) as client:
                response = await client.post(url, json=body)
                identity, _ = _identity_of(_ssl_of(response))
        except (httpx.HTTPError, StreamBroken) as exc:
            raise PeeringFailed(f"cannot reach {token.cluster}'s control plane at {token.control}: {_describe(exc)}") from None
        if response.status_code != 200:
            raise PeeringFailed(f"{token.cluster} refused the registration: {_error_text(response.content)}")
        expected = f"spiffe://{token.trust_domain}/cluster/{token.cluster}/"
        if identity is None or not identity.startswith(expected):
            raise PeeringFailed(f"{token.control} presented {identity}, not an identity of cluster {token.cluster}")
        peer = Peer(
            name=token.cluster,
            region=token.region,
            zones=token.zones,
            gateway=token.gateway,
            control=token.control,
            trust_bundle_pem=token.bundle_pem,
        )
        await self.store.put_peer(self.name, peer)
        return {"peer": token.cluster, "locality": f"{token.region}/{','.join(token.zones)}",
                "gateway": token.gateway, "control": token.control,
                "root_fingerprints": peering.root_fingerprints(token.bundle_pem)}  # fmt: skip

    async def accept_redeem(self, body: Any) -> dict[str, Any]:
        """The issuing side of a registration: spend the secret and store the new peer."""
        if not isinstance(body, dict):
            raise PeeringFailed("the registration body is not a JSON object")
        try:
            peer = Peer(
                name=body["cluster"],
                region=body["region"],
                zones=tuple(body["zones"]),
                gateway=body["gateway"],
                control=body["control"],
                trust_bundle_pem=body["bundle"],
            )
            secret = str(body["secret"])
            peering.bundle_certificates(peer.trust_bundle_pem)
        except (KeyError, TypeError, ValueError) as exc:
            raise PeeringFailed(f"the registration is malformed: {exc}") from None
        parse_host_port("control", peer.control)
        redeem_secret(self.config, secret=secret, peer=peer.name)
        await self.store.put_peer(self.name, peer)
        log.info("peer %s registered (gateway %s, control %s)", peer.name, peer.gateway, peer.control)
        return {"cluster": self.name, "peer": peer.name}

    async def remove_peer(self, name: str) -> None:
        if name not in self._peer_records:
            raise PeeringFailed(f"cluster {name!r} is not a peer of {self.name} (peers: {', '.join(sorted(self._peer_records)) or 'none'})")
        await self.store.remove_peer(self.name, name)

    # -- status ---------------------------------------------------------------------------------

    def peer_status(self, name: str) -> dict[str, Any]:
        peer = self._peer_records[name]
        imp = self.imports.get(name)
        probe = self.probes.get(name, Probe())
        now = trio.current_time()
        readings = peer_readings(self, name, now)  # what /metrics (and so the dashboard) shows
        sync = imp.sync if imp else None
        view = sync.trusted_view() if sync else None
        return {
            "name": name,
            "locality": f"{peer.region}/{','.join(peer.zones)}",
            "gateway": peer.gateway,
            "control": peer.control,
            "state": sync.state.value if sync else "connecting",
            "last_sync_age_s": None if sync is None or sync.last_sync_at is None else round(now - sync.last_sync_at, 3),
            "revision": readings.revision,
            "stale_s": _round(readings.stale_s),
            "imported_services": 0 if view is None else len(view.services),
            "imported_endpoints": 0 if view is None else len(view.endpoints),
            "exported_services": len(self.exports.view(name).services),
            "refused": dict(sync.refused) if sync else {},
            "last_error": (sync.last_error if sync else "") or probe.error or "",
            "probe": "unknown" if readings.probe_up is None else "up" if readings.probe_up else "down",
            "rtt_ms": None if readings.rtt_s is None else round(readings.rtt_s * 1000, 2),
            "clock_skew_s": _round(probe.skew_s),
            "peer_identity": probe.identity,
            "resyncs": readings.resyncs,
        }

    def peers_status(self) -> list[dict[str, Any]]:
        return [self.peer_status(n) for n in sorted(self._peer_records)]

    async def check_peer(self, name: str) -> list[dict[str, str]]:
        """`isthmus cluster check`: a verdict (ok, warn, fail) per check."""
        if name not in self._peer_records:
            raise PeeringFailed(f"cluster {name!r} is not a peer of {self.name}")
        peer = self._peer_records[name]
        probe = await self.probe(peer)
        checks: list[dict[str, str]] = []

        def add(check: str, verdict: str, detail: str) -> None:
            checks.append({"peer": name, "check": check, "verdict": verdict, "detail": detail})

        if probe.error and probe.rtt_s is None:
            add("reachability", "fail", probe.error)
        else:
            add("reachability", "ok", f"{name}'s control plane answered through its gateway {peer.gateway}")
        now = time.time()
        local_left = self.identity.not_after.timestamp() - now
        # Renewal is due at two thirds of the lifetime (certs.rotation): with less than a third
        # left, it did not happen.
        lifetime = (self.identity.not_after - self.identity.not_before).total_seconds()
        verdict = "fail" if local_left <= 0 else "warn" if local_left < lifetime / 3 else "ok"
        add("certificates", verdict, f"this cluster's identity {self.identity.spiffe_id} expires {_iso(self.identity.not_after.timestamp())}"
            + ("" if probe.peer_cert_not_after is None else f"; {name}'s expires {_iso(probe.peer_cert_not_after)}"))  # fmt: skip
        if probe.skew_s is None:
            add("clock-skew", "fail", "not checked: the peer did not answer")
        else:
            skew = abs(probe.skew_s)
            add("clock-skew", "ok" if skew < 2 else "warn" if skew < 30 else "fail", f"{probe.skew_s:+.3f} s")
        expected = f"spiffe://{self.config.trust_domain}/cluster/{name}/"
        if probe.identity is None:
            add("trust", "fail", "not checked: no verified identity from the peer")
        elif probe.identity.startswith(expected):
            add("trust", "ok", f"{name} presented {probe.identity}, verified against the trust bundles")
        else:
            add("trust", "fail", f"{name} presented {probe.identity}, expected an identity under {expected}")
        status = self.peer_status(name)
        add("exports", "ok", f"{status['exported_services']} services exported to {name}; "
            f"{status['imported_services']} imported from it ({status['imported_endpoints']} endpoints)")  # fmt: skip
        if probe.error:
            add("probe", "fail", probe.error)
        else:
            add("probe", "ok" if probe.rtt_s < 0.5 else "warn", f"round trip {probe.rtt_s * 1000:.1f} ms")
        state = status["state"]
        verdict = "ok" if state == SyncState.SYNCED.value else "warn" if state in ("syncing", "resuming") else "fail"
        detail = f"{state}, revision {status['revision']}"
        if status["stale_s"] is not None:
            detail += f", stale for {status['stale_s']:.0f} s"
        if status["last_error"]:
            detail += f" ({status['last_error']})"
        add("sync", verdict, detail)
        return checks

    # -- the crossing ------------------------------------------------------------------------------

    async def serve_crossing(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        host, port = parse_host_port("control.federation", self.federation_address)
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started()
        await trio.serve_listeners(self._handle_crossing, listeners)

    async def _handle_crossing(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self._server_context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(5):
                await stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            reason = certs_tls.classify_handshake_error(exc)
            self.refused_crossings[reason] = self.refused_crossings.get(reason, 0) + 1
            log.info("federation crossing: handshake refused (%s)", reason)
            await trio.aclose_forcefully(tcp)
            return
        identity: str | None = None
        if stream.getpeercert(binary_form=True):
            try:
                identity = str(certs_tls.peer_identity(stream))
            except CertsError as exc:
                reason = getattr(exc, "reason", "identity-rejected")
                self.refused_crossings[reason] = self.refused_crossings.get(reason, 0) + 1
                log.info("federation crossing: %s", exc)
                await trio.aclose_forcefully(stream)
                return
        api_host, api_port = parse_host_port("control.api", self.config.control_api)
        try:
            upstream = await trio.open_tcp_stream(api_host, api_port)
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        local_port = upstream.socket.getsockname()[1]
        self.crossings[local_port] = identity
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, stream, upstream, nursery.cancel_scope)
                nursery.start_soon(_pump, upstream, stream, nursery.cancel_scope)
        finally:
            self.crossings.pop(local_port, None)
            await trio.aclose_forcefully(upstream)
            await trio.aclose_forcefully(stream)

    def caller_identity(self, client: tuple[str, int] | None, headers: dict[str, str]) -> tuple[str, str | None]:
        """(how the request arrived: VIA_LOCAL, VIA_CROSSING or VIA_GATEWAY; the verified SPIFFE ID or None)."""
        if client is not None and client[1] in self.crossings:
            return VIA_CROSSING, self.crossings[client[1]]
        if XFCC_HEADER in headers or PEER_IDENTITY_HEADER in headers or FORWARD_SECRET_HEADER in headers:
            if not secrets.compare_digest(headers.get(FORWARD_SECRET_HEADER, ""), self.forward_secret):
                raise PermissionError("a forwarded identity without this cluster's forward secret")
            return VIA_GATEWAY, _xfcc_uri(headers.get(XFCC_HEADER, "")) or headers.get(PEER_IDENTITY_HEADER) or None
        return VIA_LOCAL, None

    def count_federation_call(self, via: str, path: str) -> None:
        key = (via, path)
        self.federation_calls[key] = self.federation_calls.get(key, 0) + 1

    def linked_peer_of(self, identity: str | None, claimed: str) -> Peer:
        """The peer a verified identity speaks for; PermissionError otherwise."""
        if identity is None:
            raise PermissionError("federation calls need a verified client certificate")
        domain, cluster = parse_source(identity)
        if domain != self.config.trust_domain or cluster is None:
            raise PermissionError(f"{identity} is not a cluster identity of {self.config.trust_domain}")
        if cluster != claimed:
            raise PermissionError(f"{identity} may not act for cluster {claimed}")
        peer = self._peer_records.get(cluster)
        if peer is None:
            raise PermissionError(f"cluster {cluster} is not linked with {self.name}")
        return peer

    # -- running ------------------------------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from federation.api import serve_api

        await self.store.add_cluster(self.config.cluster)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery

            @contextlib.asynccontextmanager
            async def open_store() -> AsyncIterator[Store]:
                yield self.store

            await nursery.start(serve_followed_catalog, open_store, self.name, self._on_local)
            self._reconcile_peers()
            nursery.start_soon(self._serve_import_saver)
            await nursery.start(self.serve_crossing)
            await nursery.start(serve_api, self)
            log.info("control plane %s: api http://%s, federation %s", self.name, self.config.control_api,
                     self.federation_address)  # fmt: skip
            task_status.started(self)


async def serve_control_plane(
    config: ClusterConfig, *, backend: Backend | None = None, task_status: Any = trio.TASK_STATUS_IGNORED, **kwargs: Any
) -> None:
    """Run `config`'s control plane until cancelled (opening its registry unless `backend` is given)."""
    if backend is not None:
        plane = ControlPlane(config, backend, **kwargs)
        await plane.serve(task_status=task_status)
        return
    from registry.url import open_backend

    async with open_backend(config.registry_url) as opened:
        plane = ControlPlane(config, opened, **kwargs)
        await plane.serve(task_status=task_status)


# -- small pieces --------------------------------------------------------------------------------


def config_policies(config: ClusterConfig) -> tuple[dict[str, Policy], dict[str, RouteRules]]:
    """The `[policies."svc"]` and `[[routes."svc"]]` tables of a cluster config, validated as the
    gateways will read them; `ConfigError` naming the file and the service otherwise."""
    source = str(getattr(config, "path", None) or "cluster config")
    policies: dict[str, Policy] = {}
    routes: dict[str, RouteRules] = {}
    raw_policies = config.raw.get("policies") or {}
    raw_routes = config.raw.get("routes") or {}
    try:
        if not isinstance(raw_policies, dict):
            raise ConfigInvalid("policies: must be a table of services")
        if not isinstance(raw_routes, dict):
            raise ConfigInvalid("routes: must be a table of services")
        for service, spec in raw_policies.items():
            policies[service] = validate_policy(service, spec)
        for service, rules in raw_routes.items():
            routes[service] = validate_routes(service, rules)
    except (ConfigInvalid, ValidationError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return policies, routes


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, scope: trio.CancelScope) -> None:
    try:
        while True:
            data = await src.receive_some(65536)
            if not data:
                break
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        scope.cancel()


async def _json_lines(response: httpx.Response) -> AsyncIterator[Any]:
    async for line in response.aiter_lines():
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                yield {"type": "unparseable", "line": line[:100]}


def _bundle_of(pem: str, trust_domain: str) -> TrustBundle:
    return TrustBundle(pem=pem, path=None, trust_domain=trust_domain, roots=tuple(peering.bundle_certificates(pem)))


def _xfcc_uri(value: str) -> str | None:
    for element in value.split(";"):
        key, _, val = element.strip().partition("=")
        if key.strip().lower() == "uri":
            return val.strip().strip('"') or None
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if not text and exc.__cause__ is not None:
        text = str(exc.__cause__)
    return text or type(exc).__name__


def _error_text(body: bytes) -> str:
    """The one-line reason in an error answer (`{"error": ...}` or text), short."""
    try:
        data = json.loads(body)
        text = str(data.get("error", "")) if isinstance(data, dict) else ""
    except (ValueError, RecursionError):
        text = ""
    text = text or body.decode("utf-8", "replace")
    return " ".join(text.split())[:160]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_catalog(path: Path, catalog: Catalog) -> None:
    body = codec.dumps(codec.catalog_to_json(catalog))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(body)
    os.replace(tmp, path)


