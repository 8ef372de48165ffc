"""Certificate rotation: when to renew (pure), and the trio task that renews and swaps contexts.

- `renew_at(not_before, not_after)`: two thirds into a leaf's lifetime (the habit of SPIRE and
  cert-manager: a third of the lifetime is left to retry a failed renewal before expiry).
- `ContextHolder`: the current server and client `ssl.SSLContext`s, replaced together in one
  assignment. Listeners read `.server` / `.client` for each new connection, so a connection
  keeps the context it was accepted with and open connections are never dropped by a swap.
- `serve_renewer(pki_dir, cluster, name, holder, *, task_status)`: loads (or issues) the identity,
  fills the holder, then sleeps on trio's clock until `renew_at`, reissues with the same
  lifetime and DNS names, and swaps. Every wait is `trio.sleep_until`, so tests run it on
  `trio.testing.MockClock`.

`renew_at` is pure; the rest imports trio and `certs`, never `gateway` or `federation`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import trio

from certs import pki, tls
from certs.errors import CertsError, UnknownIdentity
from certs.store import Identity, TrustBundle, load_bundle, load_identity

log = logging.getLogger(__name__)

RENEW_FRACTION = 2 / 3
# After a failed renewal, try again this often (seconds) while the current leaf is still valid.
RETRY_S = 60.0


def renew_at(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """The moment to renew a certificate valid from `not_before` to `not_after` (two thirds in)."""
    if not_after <= not_before:
        return not_before
    return not_before + (not_after - not_before) * RENEW_FRACTION


@attrs.define
class ContextHolder:
    """The mutual-TLS contexts new connections use; `swap` replaces both at once."""

    alpn: Sequence[str] = tls.DEFAULT_ALPN
    _pair: tuple[ssl.SSLContext, ssl.SSLContext] | None = attrs.field(default=None, repr=False)
    identity: Identity | None = None
    generation: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event, repr=False)

    @property
    def server(self) -> ssl.SSLContext:
        if self._pair is None:
            raise CertsError("no identity loaded yet: start serve_renewer or call swap() first")
        return self._pair[0]

    @property
    def client(self) -> ssl.SSLContext:
        if self._pair is None:
            raise CertsError("no identity loaded yet: start serve_renewer or call swap() first")
        return self._pair[1]

    def swap(self, identity: Identity, bundle: TrustBundle) -> None:
        """Build both contexts for `identity` first, then replace the pair in one step."""
        pair = (
            tls.server_context(identity, bundle, alpn=self.alpn),
            tls.client_context(identity, bundle, alpn=self.alpn),
        )
        self._pair = pair
        self.identity = identity
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_swapped(self, after_generation: int) -> int:
        """Wait until `generation` exceeds `after_generation`; return the new generation."""
        while self.generation <= after_generation:
            await self._changed.wait()
        return self.generation


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def serve_renewer(
    pki_dir: str | Path,
    cluster: str,
    name: str,
    holder: ContextHolder,
    *,
    now: Callable[[], dt.datetime] = _utcnow,
    retry_s: float = RETRY_S,
    task_status: trio.TaskStatus[ContextHolder] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep `holder` filled with a fresh identity `<name>` of `<cluster>`; never returns.

    Issues the identity first when it does not exist. `task_status.started(holder)` once the
    holder has contexts. A failed renewal is logged and retried every `retry_s` seconds; the
    old contexts stay in use meanwhile.
    """
    pki_dir = Path(pki_dir)
    try:
        identity = load_identity(pki_dir, cluster, name)
    except UnknownIdentity:
        pki.issue_identity(pki_dir, cluster, name)
        identity = load_identity(pki_dir, cluster, name)
    if identity.not_after <= now():
        identity = _reissue(pki_dir, cluster, name, identity)
    holder.swap(identity, load_bundle(pki_dir))
    task_status.started(holder)
    deadline = _renewal_deadline(identity, now)
    while True:
        await trio.sleep_until(deadline)
        try:
            identity = _reissue(pki_dir, cluster, name, identity)
            holder.swap(identity, load_bundle(pki_dir))
        except (CertsError, OSError, ssl.SSLError) as exc:
            log.warning("renewing %s failed, keeping the current certificate: %s", identity.spiffe_id, exc)
            deadline = trio.current_time() + retry_s
            continue
        log.info("renewed %s: valid until %s", identity.spiffe_id, identity.not_after.isoformat())
        deadline = _renewal_deadline(identity, now)


def _renewal_deadline(identity: Identity, now: Callable[[], dt.datetime]) -> float:
    """The wall-clock distance to `renew_at`, as a deadline on trio's clock."""
    wait_s = (renew_at(identity.not_before, identity.not_after) - now()).total_seconds()
    return trio.current_time() + max(0.0, wait_s)


def _reissue(pki_dir: Path, cluster: str, name: str, current: Identity) -> Identity:
    hours = max(current.lifetime.total_seconds() / 3600.0, 1 / 60)
    pki.issue_identity(
        pki_dir, cluster, name, dns_names=current.dns_names, hours=math.floor(hours * 3600) / 3600
    )
    return load_identity(pki_dir, cluster, name)
