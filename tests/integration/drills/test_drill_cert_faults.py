"""The certificate faults on a real demo: an expired gateway leaf fails every new handshake, a fresh one heals it,
and a rotation gives the gateway a new leaf while it keeps serving."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio

from certs.store import load_bundle, load_identity
from certs.tls import client_context
from federation.demo.orchestrator import DemoState
from scenarios.faults import Injector
from scenarios.model import Fault

pytestmark = pytest.mark.slow


async def handshake(address: str, pki_dir: str) -> bytes:
    """A west-1 gateway's handshake with `address`; returns the server's leaf (DER), or raises ssl.SSLError."""
    context = client_context(load_identity(pki_dir, "west-1", "gateway"), load_bundle(pki_dir))
    host, _, port = address.rpartition(":")
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, context, server_hostname="echo.demo")
    try:
        with trio.fail_after(10):
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                if isinstance(exc.__cause__, ssl.SSLError):
                    raise exc.__cause__ from None
                raise
        return stream.getpeercert(binary_form=True)
    finally:
        await trio.aclose_forcefully(stream)


async def test_an_expired_gateway_leaf_fails_new_handshakes_until_a_fresh_one(drills_demo: Path):
    state = DemoState.load(drills_demo)
    east = state.cluster("east-1")
    before = await handshake(east["eastwest"], east["pki_dir"])
    injector = Injector(drills_demo, state)
    expired = Fault("cert-expired", 0, 1, {"cluster": "east-1"})
    rotation = Fault("cert-rotation", 0, None, {"cluster": "east-1"})
    async with trio.open_nursery() as nursery:
        try:
            await injector.apply(expired, nursery)
            with pytest.raises(ssl.SSLError, match="expired"):
                await handshake(east["eastwest"], east["pki_dir"])
            await injector.restore(expired)
            healed = await handshake(east["eastwest"], east["pki_dir"])
            assert healed != before  # a fresh leaf, not the old one back

            await injector.apply(rotation, nursery)
            rotated = await handshake(east["eastwest"], east["pki_dir"])
            assert rotated not in (before, healed)
        finally:
            with trio.CancelScope(shield=True):
                await injector.restore_all()
    assert any("with an expired leaf" in note for note in injector.notes)
    assert any(note.startswith("cert-rotation: east-1's gateway ") for note in injector.notes)
