"""Gateway-pair probes: every gateway probes every peer gateway over mutual TLS, and answers their probes.

Owns the reserved route of the east-west listener (`:authority` `probe.isthmus`, path
`/v1/probe`, over the same mutual TLS as any crossing) and `PeerProber`, the trio loop that asks
each peer in `Catalog.peers` every `PeerProbePolicy.interval_s` (1 s by default) on the pooled
HTTP/2 connection to that peer's gateway, bounded by `timeout_s`. The answer is JSON::

    {"cluster": "west-1", "healthy": {"echo.demo": 2, "hello.demo": 1}}

the answering gateway's healthy local endpoints per service (catalog health, active checks and
ejections) for the services exported to the asking cluster. The prober records liveness, RTT
(an EWMA) and the counts in `gateway.lb.health.PeerProbe` and feeds `BalancerSet.update_peers`,
so a dead cluster leaves rotation within 3 s (two missed probes) and a remote cluster is weighed
by its healthy backends.

Never imports `federation`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import trio

from gateway.errors import GatewayError
from gateway.h2conn import StreamReset
from gateway.lb.health import PeerMarkedAlive, PeerMarkedDead, PeerProbe, PeerView
from gateway.lb.policy import PeerProbePolicy
from gateway.periodic import PeriodicChecks
from registry.model import Catalog, parse_host_port

log = logging.getLogger("isthmus.gateway.probes")

PROBE_AUTHORITY = b"probe.isthmus"
# The TLS server name of the probes' own connection to each peer gateway.
PEER_LINK_SNI = PROBE_AUTHORITY.decode()
PROBE_PATH = b"/v1/probe"
MAX_ANSWER_BYTES = 1 << 20


def probe_answer(catalog: Catalog, cluster: str, source_cluster: str | None, healthy: Callable[[str], bool],
                 balancers: list[Any] = ()) -> bytes:
    """The JSON answer to a probe from `source_cluster` (see the module docstring)."""
    ejected: set[str] = set()
    for balancer in balancers:
        ejected.update(balancer.detector.ejected())
    counts: dict[str, int] = {}
    for endpoint in catalog.endpoints.values():
        if endpoint.cluster != cluster:
            continue
        export = catalog.exports.get(endpoint.service)
        if export is None or source_cluster is None or not export.allows(source_cluster):
            continue
        counts.setdefault(endpoint.service, 0)
        if endpoint.health.value in ("healthy", "unknown") and healthy(endpoint.id) and endpoint.id not in ejected:
            counts[endpoint.service] += 1
    return json.dumps({"cluster": cluster, "healthy": counts}, sort_keys=True).encode()


async def serve_probe(answer: Callable[[str | None], bytes], req: Any, responder: Any) -> None:
    """Answer one probe request (`gateway.proxy.Request`) on the east-west listener."""
    if req.path.split(b"?", 1)[0] == PROBE_PATH and req.method in (b"GET", b"HEAD"):
        status, body = 200, answer(req.source_cluster)
    else:
        status, body = 404, b'{"error": "unknown probe path"}'
    from gateway.proxy import DownstreamGone  # the proxy imports this module

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    try:
        await responder.start(status, headers, end_stream=False, body_ready=True)
        await responder.data(body, end_stream=True)
    except (DownstreamGone, StreamReset, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("probe answer not delivered: %r", exc)  # the prober counts a missed probe


def parse_answer(body: bytes) -> Mapping[str, int]:
    """The per-service counts of a probe answer; ValueError when it is not one."""
    data = json.loads(body)
    healthy = data.get("healthy") if isinstance(data, dict) else None
    if not isinstance(healthy, dict) or not all(isinstance(v, int) for v in healthy.values()):
        raise ValueError("probe answer without per-service counts")
    return {str(k): int(v) for k, v in healthy.items()}


class PeerProber(PeriodicChecks):
    """Probes every peer gateway of the catalog in force (see the module docstring)."""

    def __init__(self, *, cluster: str, catalog: Callable[[], Catalog | None], upstreams: Any,
                 on_views: Callable[[dict[str, PeerView], float], None],
                 policy: PeerProbePolicy | None = None) -> None:
        self.cluster = cluster
        self.catalog = catalog
        self.upstreams = upstreams
        self.on_views = on_views
        self.policy = policy or PeerProbePolicy()
        self.probes: dict[str, PeerProbe] = {}
        self.running: set[str] = set()
        self.events: list[object] = []
        self._pushed: dict[str, tuple[bool, tuple[tuple[str, int], ...], float | None]] = {}

    def views(self) -> dict[str, PeerView]:
        return {name: probe.view() for name, probe in self.probes.items()}

    def sync(self, now: float) -> None:
        catalog = self.catalog()
        if catalog is None:
            return
        peers = {name for name in catalog.peers if name != self.cluster}
        for name in list(self.probes):
            if name not in peers:
                del self.probes[name]
        for name in peers:
            if name not in self.probes:
                self.probes[name] = PeerProbe(name, self.policy, now=now)

    def push(self, now: float) -> None:
        """Hand the views to the balancers when liveness or counts changed, or RTT moved by > 20 %."""
        changed = False
        state = {}
        for name, probe in self.probes.items():
            key = (probe.alive, tuple(sorted(probe.healthy.items())), probe.rtt_s)
            old = self._pushed.get(name)
            state[name] = key
            if old is None or old[:2] != key[:2]:
                changed = True
            elif old[2] is None or key[2] is None:
                changed = changed or old[2] != key[2]
            elif abs(key[2] - old[2]) > 0.2 * old[2]:
                changed = True
        if changed or set(state) != set(self._pushed):
            self._pushed = state
            self.on_views(self.views(), now)

    def due_checks(self) -> dict[str, PeerProbe]:
        return self.probes

    async def probe_once(self, name: str) -> tuple[float, Mapping[str, int]]:
        """One probe of peer `name`: (RTT, healthy counts), or an exception."""
        catalog = self.catalog()
        if catalog is None or name not in catalog.peers:
            raise GatewayError(f"cluster {name!r} is not a linked peer")
        host, port = parse_host_port("peer gateway", catalog.peers[name].gateway)
        conn = await self.upstreams.h2_conn(host, port, tls_sni=PEER_LINK_SNI, expect_cluster=name)
        started = trio.current_time()
        stream = await conn.open_stream(
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", PROBE_AUTHORITY),
             (b":path", PROBE_PATH), (b"user-agent", b"isthmus-peer-probe")],
            end_stream=True,
        )
        try:
            headers = await stream.receive_headers()
            status = next((int(v) for k, v in headers if k == b":status"), 0)
            body = b""
            while True:
                chunk = await stream.receive_chunk()
                if chunk is None:
                    break
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise ValueError("probe answer too large")
        finally:
            conn.forget(stream.id)
        rtt = trio.current_time() - started
        if status != 200:
            raise GatewayError(f"probe of {name} answered {status}")
        return rtt, parse_answer(body)

    async def check_one(self, name: str, probe: PeerProbe) -> None:
        result = None
        with trio.move_on_after(self.policy.timeout_s):
            try:
                result = await self.probe_once(name)
            except (GatewayError, StreamReset, ValueError, OSError, trio.BrokenResourceError,
                    trio.ClosedResourceError) as exc:
                log.debug("probe of %s failed: %s", name, exc)
        now = trio.current_time()
        if result is None:
            event: object = probe.record_failure(now)
        else:
            event = probe.record_success(now, result[0], result[1])
        if isinstance(event, PeerMarkedDead):
            log.warning("peer gateway %s missed %d probes: out of rotation", name, probe.misses)
        elif isinstance(event, PeerMarkedAlive):
            log.info("peer gateway %s answers its probes again", name)
        if event is not None:
            self.events.append(event)
        self.push(now)
