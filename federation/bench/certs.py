"""`isthmus bench certs`: how fast the mesh PKI issues and verifies leaves, and mutual-TLS handshakes/s.

Three measurements on one machine:
1. issue N leaves with `certs.pki.issue_identity` (key generation, signing, three atomic files);
2. verify those N chains offline against the bundle (`certs.chain.verify_chain`);
3. full mutual-TLS handshakes on loopback with trio: TCP connect, TLS 1.3 handshake, both sides'
   `peer_identity`, one byte from the server so the server's verification is counted too;
   optionally beside `openssl s_server`/`s_time` with the same certificates.
"""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from certs import files, pki
from certs.chain import verify_chain
from certs.store import load_bundle
from certs.testing import TestPki
from certs.tls import peer_identity
from federation.bench._machine import write_results
from federation.commands._common import print_table

HELP = "issue and verify leaves (leaves/s) and mutual-TLS handshakes/s on loopback"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--leaves", type=int, default=1000, help="leaves to issue and verify (default: %(default)s)"
    )
    parser.add_argument(
        "--handshakes", type=int, default=500, help="handshakes to time (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="concurrent trio clients (default: %(default)s)"
    )
    parser.add_argument("--key-type", choices=pki.KEY_TYPES, default="ec", help="root/cluster CA key type")
    parser.add_argument("--openssl-seconds", type=int, default=3, help="openssl s_time run (0: skip)")


def _issue_and_verify(directory: Path, count: int) -> dict[str, Any]:
    names = [f"w{i:05d}" for i in range(count)]
    started = time.perf_counter()
    for name in names:
        pki.issue_identity(directory, "east-1", name)
    issue_s = time.perf_counter() - started
    bundle = load_bundle(directory)
    chains = [
        files.load_certificates(files.identity_dir(directory, "east-1", n) / "chain.pem") for n in names
    ]
    now = pki.utcnow()
    started = time.perf_counter()
    failures = sum(1 for chain in chains if not verify_chain(chain, bundle.roots, now).ok)
    verify_s = time.perf_counter() - started
    if failures:
        raise SystemExit(f"bench certs: {failures} of {count} freshly issued chains did not verify")
    return {
        "leaves": count,
        "issue_s": round(issue_s, 3),
        "issue_leaves_per_s": round(count / issue_s, 1),
        "verify_s": round(verify_s, 3),
        "verify_leaves_per_s": round(count / verify_s, 1),
    }


async def _handshakes(made, count: int, concurrency: int) -> dict[str, Any]:
    server_ctx = made.server_context("west-1")
    client_ctx = made.client_context("east-1")
    latencies: list[float] = []

    async def handle(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        try:
            await stream.do_handshake()
            peer_identity(stream)
            await stream.send_all(b"k")
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def client(n: int, port: int) -> None:
        for _ in range(n):
            started = trio.current_time()
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, client_ctx, server_hostname="west-1")
            await stream.do_handshake()
            peer_identity(stream)
            if await stream.receive_some(1) != b"k":
                raise SystemExit("bench certs: the server refused a good client")
            await trio.aclose_forcefully(stream)
            latencies.append(trio.current_time() - started)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        started = trio.current_time()
        async with trio.open_nursery() as clients:
            for i in range(concurrency):
                clients.start_soon(client, count // concurrency + (1 if i < count % concurrency else 0), port)
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    latencies.sort()
    return {
        "handshakes": count,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "handshakes_per_s": round(count / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
    }


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _openssl_run(made, seconds: int) -> dict[str, Any] | None:
    binary = shutil.which("openssl")
    if binary is None or seconds <= 0:
        return None
    server = made.identity("west-1")
    client = made.identity("east-1")
    with tempfile.TemporaryDirectory() as tmp:
        # s_time sends only its leaf, so the server trusts the bundle and knows the cluster CAs.
        cafile = Path(tmp) / "ca.pem"
        cafile.write_bytes(
            made.bundle.pem.encode()
            + b"".join((made.dir / "clusters" / c / "ca.crt").read_bytes() for c in made.clusters)
        )
        port = _port()
        command = [
            binary,
            "s_server",
            "-quiet",
            "-accept",
            f"127.0.0.1:{port}",
            "-tls1_3",
            "-cert",
            str(server.cert_path),
            "-key",
            str(server.key_path),
            "-cert_chain",
            str(server.chain_path),
            "-CAfile",
            str(cafile),
            "-Verify",
            "3",
            "-verify_return_error",
            "-www",
        ]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.perf_counter() + 5
            while True:
                probe = subprocess.run(
                    [
                        binary,
                        "s_client",
                        "-connect",
                        f"127.0.0.1:{port}",
                        "-tls1_3",
                        "-brief",
                        "-cert",
                        str(client.cert_path),
                        "-key",
                        str(client.key_path),
                        "-CAfile",
                        str(cafile),
                    ],
                    input="",
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                if probe.returncode == 0 or time.perf_counter() > deadline:
                    break
            result = subprocess.run(
                [
                    binary,
                    "s_time",
                    "-connect",
                    f"127.0.0.1:{port}",
                    "-new",
                    "-tls1_3",
                    "-time",
                    str(seconds),
                    "-www",
                    "/",
                    "-cert",
                    str(client.cert_path),
                    "-key",
                    str(client.key_path),
                    "-CAfile",
                    str(cafile),
                ],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
            )
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    match = re.search(r"(\d+) connections in (\d+) real seconds", result.stdout)
    if not match:
        return {"error": (result.stdout + result.stderr).strip().splitlines()[-1:]}
    connections, real_s = int(match.group(1)), int(match.group(2))
    return {
        "handshakes": connections,
        "elapsed_s": real_s,
        "handshakes_per_s": round(connections / max(real_s, 1), 1),
    }


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "pki"
        pki.init_root(directory, "mesh.example", key_type=args.key_type)
        for cluster, (region, zone) in (
            ("east-1", ("us-east", "us-east-1a")),
            ("west-1", ("eu-west", "eu-west-1a")),
        ):
            pki.create_cluster_ca(directory, cluster, region=region, zone=zone)
            pki.issue_identity(directory, cluster, "gateway")
        made = TestPki(directory, "mesh.example", ("east-1", "west-1"), load_bundle(directory))
        leaves = _issue_and_verify(directory, args.leaves)
        sequential = trio.run(_handshakes, made, args.handshakes, 1)
        concurrent = trio.run(_handshakes, made, args.handshakes, args.concurrency)
        openssl = _openssl_run(made, args.openssl_seconds)
    payload = {
        "benchmark": "certs",
        "key_type": args.key_type,
        "leaf_key": "ECDSA P-256",
        "tls": "TLS 1.3, mutual, loopback 127.0.0.1",
        "leaves": leaves,
        "trio_handshakes_sequential": sequential,
        "trio_handshakes_concurrent": concurrent,
        "openssl_s_time": openssl,
    }
    path = write_results(args.out, payload)
    rows = [
        ("issue leaves", leaves["leaves"], f"{leaves['issue_leaves_per_s']:.0f} leaves/s", ""),
        ("verify chains (offline)", leaves["leaves"], f"{leaves['verify_leaves_per_s']:.0f} leaves/s", ""),
        (
            "mTLS handshakes, trio, 1 client",
            sequential["handshakes"],
            f"{sequential['handshakes_per_s']:.0f}/s",
            f"p50 {sequential['p50_ms']} ms, p99 {sequential['p99_ms']} ms",
        ),
        (
            f"mTLS handshakes, trio, {args.concurrency} clients",
            concurrent["handshakes"],
            f"{concurrent['handshakes_per_s']:.0f}/s",
            f"p50 {concurrent['p50_ms']} ms, p99 {concurrent['p99_ms']} ms",
        ),
    ]
    if openssl and "handshakes_per_s" in openssl:
        rows.append(
            (
                "mTLS handshakes, openssl s_time",
                openssl["handshakes"],
                f"{openssl['handshakes_per_s']:.0f}/s",
                "C, one client",
            )
        )
    print_table(f"bench certs ({args.key_type} CAs)", ["what", "count", "rate", "latency"], rows)
    print(f"wrote {path}")
    return 0
