"""`isthmus gateway --config ...` as a user runs it: serve, reload, SIGTERM drain, --workers, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import h11
import httpx
import pytest
import trio

from certs.testing import make_pki
from federation.cli import main
from tests.conftest import free_port
from tests.integration.gateway.support import eventually, serve_hypercorn


@pytest.fixture(scope="module")
def cli_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("cli") / "pki")


def write_config(directory: Path, pki_dir: Path, *, extra: str = "", catalog_file: str | None = "catalog.json") -> Path:
    ports = {name: free_port() for name in ("eastwest", "outbound", "admin")}
    lines = [
        'trust_domain = "mesh.example"',
        "[cluster]", 'name = "east-1"', 'region = "us-east"', 'zones = ["us-east-1a"]',
        "[pki]", f'dir = "{pki_dir}"',
        "[gateway]",
        *(f'{name} = "127.0.0.1:{port}"' for name, port in ports.items()),
    ]
    if catalog_file:
        lines.append(f'catalog_file = "{catalog_file}"')
    path = directory / "east-1.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


WEST_1_PEER = {"name": "west-1", "region": "eu-west", "zones": ["eu-west-1a"], "gateway": "127.0.0.1:9"}


def write_catalog(path: Path, upstream_port: int, revision: int = 1, *, link_west: bool = False) -> None:
    """The catalog file; `link_west` links west-1, so its gateway identity is let in on the east-west listener."""
    path.write_text(json.dumps({
        "cluster": "east-1",
        "revision": revision,
        "services": [{"name": "echo", "namespace": "demo", "protocol": "http"}],
        "endpoints": [{"service": "echo.demo", "cluster": "east-1", "address": "127.0.0.1",
                       "port": upstream_port, "locality": "us-east/us-east-1a"}],
        "exports": [{"service": "echo.demo", "to": ["*"]}],
        "peers": [WEST_1_PEER] if link_west else [],
    }))


def addresses(config: Path) -> dict[str, str]:
    import tomllib

    return tomllib.loads(config.read_text())["gateway"]


async def wait_ready(admin: str, process: trio.Process, timeout_s: float = 20) -> None:
    with trio.fail_after(timeout_s):
        async with httpx.AsyncClient() as client:
            while True:
                assert process.returncode is None, "the gateway exited"
                try:
                    if (await client.get(f"http://{admin}/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)


async def start(config: Path, *args: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "federation.cli", "gateway", "--config", str(config), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_serves_reloads_and_drains_on_sigterm(tmp_path, cli_pki, nursery):
    upstream = await serve_hypercorn(nursery, "127.0.0.1")
    config = write_config(tmp_path, cli_pki.dir)
    write_catalog(tmp_path / "catalog.json", upstream)
    gw = addresses(config)
    process = await start(config)
    try:
        await wait_ready(gw["admin"], process)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{gw['outbound']}/headers", headers={"host": "echo.demo"})
            assert response.status_code == 200
            assert response.headers["x-isthmus-cluster"] == "east-1"
            write_catalog(tmp_path / "catalog.json", upstream, revision=2)
            with trio.fail_after(10):
                while True:
                    catalog = (await client.get(f"http://{gw['admin']}/catalog")).json()
                    if catalog["catalog"]["revision"] == 2:
                        break
                    await trio.sleep(0.1)
            metrics = (await client.get(f"http://{gw['admin']}/metrics")).text
        assert "isthmus_catalog_revision 2.0" in metrics
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = await process.stderr.receive_some(65536)
    assert b"serving (eastwest 127.0.0.1:" in stderr


async def certs_page(client: httpx.AsyncClient, admin: str) -> dict:
    response = await client.get(f"http://{admin}/certs")
    assert response.status_code == 200
    return response.json()


async def presented_serial(eastwest: str, pki_dir: Path) -> int:
    """The serial of the leaf the gateway presents to a new peer (west-1's gateway) on its east-west listener."""
    from cryptography import x509

    from certs.store import load_bundle, load_identity
    from certs.tls import client_context

    context = client_context(load_identity(pki_dir, "west-1", "gateway"), load_bundle(pki_dir))
    host, _, port = eastwest.rpartition(":")
    stream = trio.SSLStream(await trio.open_tcp_stream(host, int(port)), context, server_hostname="echo.demo")
    try:
        with trio.fail_after(10):
            await stream.do_handshake()
        return x509.load_der_x509_certificate(stream.getpeercert(binary_form=True)).serial_number
    finally:
        await trio.aclose_forcefully(stream)


async def test_admin_certs_names_the_leaf_in_use_and_a_broken_reissue_keeps_it(tmp_path):
    """`/certs` follows a SIGHUP rotation (drills wait on it); a SIGHUP with a broken identity on disk
    changes nothing: the leaf in use stays, and new handshakes still get it."""
    from certs import pki
    from certs.store import load_identity

    pki_dir = make_pki(tmp_path / "pki").dir  # reissued below: not the module's shared PKI
    config = write_config(tmp_path, pki_dir)
    write_catalog(tmp_path / "catalog.json", free_port(), link_west=True)
    gw = addresses(config)
    process = await start(config)
    try:
        await wait_ready(gw["admin"], process)
        first = load_identity(pki_dir, "east-1", "gateway")
        async with httpx.AsyncClient() as client:
            page = await certs_page(client, gw["admin"])
            assert page["identity"] == "spiffe://mesh.example/cluster/east-1/gateway"
            assert page["serial"] == format(first.serial_number, "x")
            assert 0 < page["expires_in_s"] <= first.lifetime.total_seconds()
            assert page["not_after"] == first.not_after.isoformat()

            pki.issue_identity(pki_dir, "east-1", "gateway")
            second = load_identity(pki_dir, "east-1", "gateway")
            process.send_signal(signal.SIGHUP)
            with trio.fail_after(10):  # the reload is asynchronous
                while (await certs_page(client, gw["admin"]))["serial"] != format(second.serial_number, "x"):
                    await trio.sleep(0.05)
            assert await presented_serial(gw["eastwest"], pki_dir) == second.serial_number

            # A broken identity on disk: SIGHUP keeps the leaf in use and the gateway keeps serving.
            key = pki_dir / "clusters" / "east-1" / "identities" / "gateway" / "key.pem"
            key.write_text("not a key\n")
            process.send_signal(signal.SIGHUP)
            stderr = b""
            with trio.fail_after(10):
                while b"SIGHUP: keeping the current identity" not in stderr:
                    stderr += await process.stderr.receive_some(65536)
            assert (await certs_page(client, gw["admin"]))["serial"] == format(second.serial_number, "x")
            assert await presented_serial(gw["eastwest"], pki_dir) == second.serial_number
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_two_workers_share_the_ports(tmp_path, cli_pki):
    config = write_config(tmp_path, cli_pki.dir)
    write_catalog(tmp_path / "catalog.json", free_port())
    gw = addresses(config)
    process = await start(config, "--workers", "2")
    try:
        await wait_ready(gw["admin"], process)
        pids = set()
        with trio.fail_after(20):
            while len(pids) < 2:
                # A new connection each time: the kernel spreads connections over the workers.
                async with httpx.AsyncClient() as client:
                    pids.add((await client.get(f"http://{gw['admin']}/catalog")).json()["pid"])
        assert process.pid not in pids
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize(
    ("extra", "catalog", "expected"),
    [
        ("connect_timeout_s = -1\n", "{}", "gateway.connect_timeout_s: -1 is not a positive number of seconds"),
        ('tcp_ports = { "http" = "db.shop" }\n', "{}", "gateway.tcp_ports: 'http' is not a port number"),
        ("", "{", "catalog.json: catalog: not valid JSON"),
        ("", '{"cluster": "east-1", "services": [{"name": "x"}]}', "catalog.services[0]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, cli_pki, capsys, extra, catalog, expected):
    config = write_config(tmp_path, cli_pki.dir)
    config.write_text(config.read_text() + extra)
    (tmp_path / "catalog.json").write_text(catalog)
    assert main(["gateway", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isthmus: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_catalog_and_missing_pki_are_one_line(tmp_path, cli_pki, capsys):
    config = write_config(tmp_path, cli_pki.dir, catalog_file=None)
    assert main(["gateway", "--config", str(config), "--catalog", str(tmp_path / "none.json")]) == 2
    assert "none.json: cannot read catalog" in capsys.readouterr().err
    config = write_config(tmp_path, tmp_path / "no-pki")
    assert main(["gateway", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("isthmus: error: ") and err.count("\n") == 1


async def test_sighup_presents_a_reissued_certificate_and_open_connections_keep_theirs(tmp_path, nursery):
    """Rotation under a running gateway: after `certs issue` and SIGHUP, new handshakes get the new
    certificate, while a connection opened before keeps working on the old one."""
    import ssl

    from certs import pki as pki_ops
    from certs.tls import client_context

    pki = make_pki(tmp_path / "pki")  # its own PKI: this test reissues the gateway's leaf
    config = write_config(tmp_path, pki.dir)
    write_catalog(tmp_path / "catalog.json", await serve_hypercorn(nursery, "127.0.0.1"), link_west=True)
    process = await start(config)
    try:
        await wait_ready(addresses(config)["admin"], process)
        host, port = addresses(config)["eastwest"].rsplit(":", 1)
        context = client_context(pki.identity("west-1", "gateway"), pki.bundle, alpn=("http/1.1",))

        def open_tls() -> ssl.SSLSocket:
            import socket

            raw = socket.create_connection((host, int(port)), timeout=5)
            return context.wrap_socket(raw, server_hostname="echo.demo")

        def serial(conn: ssl.SSLSocket) -> int:
            from cryptography import x509

            return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True)).serial_number

        parsers: dict[int, h11.Connection] = {}

        def get(conn: ssl.SSLSocket) -> int:
            """One keep-alive exchange on `conn`, read whole; returns the status code."""
            parser = parsers.setdefault(id(conn), h11.Connection(h11.CLIENT))
            if parser.our_state is h11.DONE:
                parser.start_next_cycle()
            conn.sendall(parser.send(h11.Request(method="GET", target="/headers", headers=[("host", "echo.demo")]))
                         + parser.send(h11.EndOfMessage()))
            status = 0
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    parser.receive_data(conn.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    return status

        # Blocking sockets run in a thread: this trio loop also serves the upstream.
        run = trio.to_thread.run_sync
        before = await run(open_tls)
        assert await run(get, before) == 200
        old_serial = serial(before)
        pki_ops.issue_identity(pki.dir, "east-1", "gateway")
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(10):
            while True:  # the reload is asynchronous: poll new handshakes until they show the new leaf
                after = await run(open_tls)
                if serial(after) != old_serial:
                    break
                after.close()
                await trio.sleep(0.05)
        assert await run(get, after) == 200
        assert await run(get, before) == 200, "the connection opened before the rotation broke"
        before.close()
        after.close()
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await process.wait()


async def test_a_tracing_table_makes_the_gateway_export_a_span_per_request(tmp_path, cli_pki, nursery):
    pytest.importorskip("opentelemetry.sdk", reason="the otlp extra is not installed (pip install 'isthmus[otlp]')")
    from tests.integration.policy.test_otlp_export_live import OtlpReceiver, attributes

    upstream = await serve_hypercorn(nursery, "127.0.0.1")
    with OtlpReceiver() as receiver:
        extra = f'[tracing]\notlp_endpoint = "{receiver.endpoint}"\nflush_interval_s = 0.1\n'
        config = write_config(tmp_path, cli_pki.dir, extra=extra)
        write_catalog(tmp_path / "catalog.json", upstream)
        gw = addresses(config)
        process = await start(config)
        try:
            await wait_ready(gw["admin"], process)
            traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{gw['outbound']}/headers",
                                            headers={"host": "echo.demo", "traceparent": traceparent})
            assert response.status_code == 200
            await eventually(lambda: receiver.trace("0af7651916cd43dd8448eb211c80319c"), timeout_s=10)
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await process.wait()
    (service, span), = receiver.trace("0af7651916cd43dd8448eb211c80319c").items()
    assert service == "isthmus-east-1"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    assert attributes(span.attributes)["http.response.status_code"] == 200
