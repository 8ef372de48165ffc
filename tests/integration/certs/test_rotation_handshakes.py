"""Rotation with real handshakes on loopback, on trio's MockClock: renew at two thirds of the
lifetime, new connections get the new certificate, open connections keep working."""

from __future__ import annotations

import functools

import pytest
from cryptography import x509
from trio.testing import wait_all_tasks_blocked

from certs import files
from certs.rotation import ContextHolder, serve_renewer
from certs.testing import make_pki

from .mtls_harness import GreetingServer, open_client, read_line


@pytest.fixture
def made(tmp_path):
    return make_pki(
        tmp_path, clusters={"east-1": ("us-east", "us-east-1a"), "west-1": ("eu-west", "eu-west-1a")}
    )


def server_serial(stream) -> int:
    return x509.load_der_x509_certificate(stream.getpeercert(binary_form=True)).serial_number


async def start(nursery, made, holder, **kwargs):
    await nursery.start(functools.partial(serve_renewer, made.dir, "west-1", "gateway", holder, **kwargs))
    server = GreetingServer(lambda: holder.server)
    await nursery.start(server.serve)
    return server


async def test_renewal_swaps_for_new_connections_and_keeps_open_ones(made, mock_clock, nursery):
    made.issue("west-1", "gateway", hours=3)  # backdated 5 minutes: renewal due in 1h55m
    holder = ContextHolder()
    server = await start(nursery, made, holder)
    first = holder.identity
    assert holder.generation == 1

    old = await open_client(server.port, made.client_context("east-1"))
    assert server_serial(old) == first.serial_number
    assert await read_line(old) == b"hello spiffe://mesh.example/cluster/east-1/gateway\n"

    mock_clock.jump(115 * 60 - 30)
    await wait_all_tasks_blocked()
    assert holder.generation == 1, "renewed before two thirds of the lifetime"

    mock_clock.jump(60)
    await wait_all_tasks_blocked()
    assert holder.generation == 2
    second = holder.identity
    assert second.serial_number != first.serial_number
    assert second.spiffe_id == first.spiffe_id
    assert second.lifetime == first.lifetime
    assert files.load_certificate(second.cert_path).serial_number == second.serial_number

    new = await open_client(server.port, made.client_context("east-1"))
    assert server_serial(new) == second.serial_number
    assert await read_line(new) == b"hello spiffe://mesh.example/cluster/east-1/gateway\n"

    # The connection opened before the swap still carries data, on the old certificate.
    await old.send_all(b"still here\n")
    assert await read_line(old) == b"still here\n"
    assert server_serial(old) == first.serial_number
    await old.aclose()
    await new.aclose()


async def test_a_failed_renewal_keeps_the_old_certificate_and_retries(made, mock_clock, nursery, caplog):
    made.issue("west-1", "gateway", hours=3)
    holder = ContextHolder()
    server = await start(nursery, made, holder, retry_s=60)
    ca_key = made.dir / "clusters" / "west-1" / "ca.key"
    saved = ca_key.read_bytes()
    ca_key.write_text("garbage\n")

    mock_clock.jump(2 * 3600)
    await wait_all_tasks_blocked()
    assert holder.generation == 1
    assert "renewing spiffe://mesh.example/cluster/west-1/gateway failed" in caplog.text
    stream = await open_client(server.port, made.client_context("east-1"))
    assert await read_line(stream) == b"hello spiffe://mesh.example/cluster/east-1/gateway\n"
    await stream.aclose()

    ca_key.write_bytes(saved)
    mock_clock.jump(61)
    await wait_all_tasks_blocked()
    assert holder.generation == 2


async def test_renewer_issues_a_missing_identity(tmp_path, mock_clock, nursery):
    made = make_pki(tmp_path, clusters={"west-1": ("eu-west", "eu-west-1a")}, identities=())
    holder = ContextHolder()
    await nursery.start(functools.partial(serve_renewer, made.dir, "west-1", "control", holder))
    assert str(holder.identity.spiffe_id) == "spiffe://mesh.example/cluster/west-1/control"
    assert holder.server is not None and holder.client is not None
