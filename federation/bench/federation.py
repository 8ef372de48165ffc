"""`isthmus bench federation`: how fast a change crosses clusters, and what imports cost.

Three control planes on loopback (east-1 127.0.1.1, east-2 127.0.2.1, west-1 127.0.3.1), each on
its own registry (sqlite files by default), peered in a full mesh with tokens, in this process,
each with one gateway-side `ControlPlaneCatalogSource` reading its catalog stream (what a gateway
runs). Three measurements:

1. propagation: an endpoint registered in one cluster's registry, until the gateway streams of
   the two other clusters hold it; p50/p99 over `--changes` changes (round robin over the
   clusters, one every `--interval-ms`). Goal p99 <= 500 ms.
2. resync: east-1 exports `--resync-endpoints` endpoints to west-1; east-1's control plane stops,
   one endpoint is deregistered meanwhile, and it restarts (its history is gone, so west-1 gets a
   full snapshot); time from the restart until west-1 holds the snapshot, with a consistency check
   (nothing missing, extra or duplicated). Goal <= 2 s.
3. memory: growth of this process's resident memory while west-1 imports `--memory-endpoints`
   endpoints from east-2 (the exporter's own catalog is built before the first sample).

All three control planes share this process and one core: the numbers are conservative.
"""

from __future__ import annotations

import argparse
import gc
import logging
import socket
import statistics
import tempfile
from contextlib import aclosing
from pathlib import Path
from typing import Any

import psutil
import trio

from federation.bench._machine import write_results

HELP = "federation: change propagation p50/p99 across 3 clusters, resync of imported endpoints, import memory"
CLUSTERS = {"east-1": ("us-east", "us-east-1a", "127.0.1.1"), "east-2": ("us-east", "us-east-1c", "127.0.2.1"),
            "west-1": ("eu-west", "eu-west-1a", "127.0.3.1")}  # fmt: skip
# Every synthetic endpoint address is on loopback (127.0.0.0/8): the bench never sends a packet off the machine.
SYNTHETIC_SERVICES = ("probe.bench", "bulk.bench", "big.bench")
GOAL_P99_MS = 500.0
GOAL_RESYNC_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--changes", type=int, default=200, help="changes for propagation (default: %(default)s)")
    parser.add_argument("--interval-ms", type=float, default=50.0, help="time between changes (default: %(default)s)")
    parser.add_argument("--resync-endpoints", type=int, default=10_000, help="endpoints resynced (default: %(default)s)")
    parser.add_argument("--memory-endpoints", type=int, default=100_000,
                        help="endpoints imported for the memory figure; 0 skips it (default: %(default)s)")  # fmt: skip
    parser.add_argument("--backend", choices=("sqlite", "memory"), default="sqlite",
                        help="registry of each cluster (default: %(default)s)")  # fmt: skip


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class _Cluster:
    def __init__(self, name: str, base: Path, pki_dir: Path) -> None:
        from federation.config import ClusterConfig

        region, zone, host = CLUSTERS[name]
        self.name = name
        self.locality = (region, zone)
        self.host = host
        self.config = ClusterConfig.from_mapping(
            {
                "cluster": {"name": name, "region": region, "zones": [zone]},
                "pki": {"dir": str(pki_dir)},
                "registry": {"url": f"sqlite:///{base / name / 'registry.db'}"},
                "gateway": {"eastwest": f"{host}:{_free_port(host)}", "outbound": f"{host}:{_free_port(host)}",
                            "admin": f"{host}:{_free_port(host)}"},
                "control": {"api": f"{host}:{_free_port(host)}", "federation": f"{host}:{_free_port(host)}"},
                # The bench's endpoints are synthetic loopback addresses nothing listens on: no active checks.
                "policies": {svc: {"health_check": {"enabled": False}} for svc in SYNTHETIC_SERVICES},
            },
            base_dir=base / name,
        )
        self.backend: Any = None
        self.plane: Any = None
        self.gateway: Any = None
        self.scope: trio.CancelScope | None = None
        self.seen: dict[str, float] = {}

    async def start(self, nursery: trio.Nursery) -> None:
        from federation.control import ControlPlane

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self.scope = scope
                plane = ControlPlane(self.config, self.backend, heartbeat_s=1.0, idle_timeout_s=5.0)
                await plane.serve(task_status=task_status)

        self.plane = await nursery.start(run)
        if self.gateway is None:  # federation crosses between clusters through their gateways
            from federation.commands.gateway import serve_cluster_gateway

            self.gateway = await nursery.start(lambda task_status: serve_cluster_gateway(self.config, task_status=task_status))

    async def follow(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """What a gateway of this cluster sees: note when each endpoint address first appears."""
        from gateway.control_source import ControlPlaneCatalogSource

        source = ControlPlaneCatalogSource(self.config.control_api, idle_timeout_s=10.0)
        task_status.started()
        async with aclosing(source.__aiter__()) as catalogs:
            async for catalog in catalogs:
                now = trio.current_time()
                for endpoint in catalog.endpoints.values():
                    if endpoint.service == "probe.bench":
                        self.seen.setdefault(endpoint.address, now)


async def _wait(predicate: Any, what: str, within_s: float) -> None:
    with trio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110 - polling state with a deadline
            await trio.sleep(0.005)


async def _bench(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    from certs.testing import make_pki
    from federation.control import issue_peering_token
    from federation.imports import check_consistency, export_view
    from registry.model import Endpoint, Export, Locality, Service
    from registry.store import Store
    from registry.testing import FakeBackend
    from registry.url import open_backend

    pki = make_pki(base / "pki", clusters={n: (r, z) for n, (r, z, _) in CLUSTERS.items()})
    clusters = {name: _Cluster(name, base, pki.dir) for name in CLUSTERS}
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        for c in clusters.values():
            if args.backend == "memory":
                c.backend = FakeBackend()
            else:
                c.backend = await nursery.start(_hold_backend, open_backend, c.config.registry_url)
            await c.start(nursery)
        stores = {n: Store(c.backend) for n, c in clusters.items()}
        names = list(clusters)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                token, _ = issue_peering_token(clusters[a].config, b, 600)
                await clusters[b].plane.register_with_token(token)
        probe = Service.from_key("probe.bench")
        for n, store in stores.items():
            await store.register_service(n, probe)
            await store.set_export(n, Export("probe.bench", ("*",)))
        for c in clusters.values():
            await nursery.start(c.follow)
        await _wait(lambda: all(
            imp.sync.state.value == "synced" for c in clusters.values() for imp in c.plane.imports.values()
        ) and all(len(c.plane.imports) == 2 for c in clusters.values()), "full mesh synced", 30)  # fmt: skip

        # 1. propagation
        latencies: list[float] = []
        for k in range(args.changes):
            origin = clusters[names[k % 3]]
            address = f"127.{10 + k // 250}.{k % 250}.{names.index(origin.name) + 1}"
            others = [c for c in clusters.values() if c is not origin]
            endpoint = Endpoint("probe.bench", origin.name, address, 8080, Locality(*origin.locality))
            start = trio.current_time()
            await stores[origin.name].register_endpoints(probe, [endpoint], replace=False)
            await _wait(lambda address=address, others=others: all(address in c.seen for c in others), "propagation", 10)
            latencies += [(c.seen[address] - start) * 1000 for c in others]
            await trio.sleep(args.interval_ms / 1000)
        results["propagation"] = {
            "changes": args.changes,
            "samples": len(latencies),
            "p50_ms": round(_percentile(latencies, 0.50), 2),
            "p99_ms": round(_percentile(latencies, 0.99), 2),
            "max_ms": round(max(latencies), 2),
            "mean_ms": round(statistics.fmean(latencies), 2),
            "goal_p99_ms": GOAL_P99_MS,
        }

        # 2. resync after a peer restart
        east, west = clusters["east-1"], clusters["west-1"]
        bulk = Service.from_key("bulk.bench")
        loc = Locality(*east.locality)
        n = args.resync_endpoints
        batch = [Endpoint("bulk.bench", "east-1", f"127.{100 + i // 62500}.{i // 250 % 250}.{i % 250}", 9000, loc) for i in range(n)]
        for i in range(0, n, 2000):
            await stores["east-1"].register_endpoints(bulk, batch[i : i + 2000], replace=False)
        await stores["east-1"].set_export("east-1", Export("bulk.bench", ("west-1",)))

        def west_bulk() -> int:
            view = west.plane.imports["east-1"].sync.trusted_view()
            return 0 if view is None else sum(1 for e in view.endpoints.values() if e.service == "bulk.bench")

        await _wait(lambda: west_bulk() == n, "initial import", 60)
        resyncs_before = len(west.plane.imports["east-1"].resyncs)
        assert east.scope is not None
        east.scope.cancel()
        await _wait(lambda: west.plane.imports["east-1"].sync.state.value == "stale", "stale", 30)
        # Registrations go on while the control plane is down: west-1's revision is not one the
        # restarted control plane remembers, so it must send everything again.
        await stores["east-1"].deregister("east-1", "bulk.bench", batch[0].id)
        restart = trio.current_time()
        await east.start(nursery)
        await _wait(lambda: len(west.plane.imports["east-1"].resyncs) > resyncs_before, "resync", 60)
        resync_s = trio.current_time() - restart
        truth = export_view(await stores["east-1"].load_catalog("east-1"), "west-1")
        held = west.plane.imports["east-1"].sync.trusted_view()
        report = check_consistency(held.endpoints.values(), truth.endpoints.values())
        connected_at = west.plane.imports["east-1"].sync.connected_at or restart
        results["resync"] = {
            "endpoints": n,
            "seconds_from_restart": round(resync_s, 3),
            "seconds_from_reconnect": round(trio.current_time() - connected_at, 3) if connected_at > restart else None,
            "missing": len(report.missing),
            "unexpected": len(report.unexpected),
            "duplicated": len(report.duplicated),
            "goal_s": GOAL_RESYNC_S,
        }

        # 3. memory of imported endpoints
        m = args.memory_endpoints
        if m:
            source = clusters["east-2"]
            big = Service.from_key("big.bench")
            bloc = Locality(*source.locality)
            for i in range(0, m, 5000):
                await stores["east-2"].register_endpoints(big, [
                    Endpoint("big.bench", "east-2", f"127.{200 + j // 62500}.{j // 250 % 250}.{j % 250}", 9000, bloc)
                    for j in range(i, min(m, i + 5000))
                ], replace=False)  # fmt: skip
            await _wait(lambda: sum(
                1 for e in source.plane.local.endpoints.values() if e.service == "big.bench") == m, "exporter holds", 300)  # fmt: skip
            gc.collect()
            before = psutil.Process().memory_info().rss
            start = trio.current_time()
            await stores["east-2"].set_export("east-2", Export("big.bench", ("west-1",)))

            def west_big() -> int:
                view = west.plane.imports["east-2"].sync.trusted_view()
                return 0 if view is None else sum(1 for e in view.endpoints.values() if e.service == "big.bench")

            await _wait(lambda: west_big() == m, "big import", 300)
            import_s = trio.current_time() - start
            gc.collect()
            after = psutil.Process().memory_info().rss
            results["memory"] = {
                "imported_endpoints": m,
                "import_seconds": round(import_s, 2),
                "rss_growth_mb": round((after - before) / 2**20, 1),
                "bytes_per_endpoint": round((after - before) / m),
                "process_rss_mb": round(after / 2**20, 1),
            }
        nursery.cancel_scope.cancel()
    return results


async def _hold_backend(open_backend: Any, url: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with open_backend(url) as backend:
        task_status.started(backend)
        await trio.sleep_forever()


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    # The bench stops a control plane on purpose: its peers' warnings about it are expected.
    logging.getLogger("isthmus").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="isthmus-bench-federation-") as tmp:
        results = trio.run(_bench, args, Path(tmp))
    table = Table(title="isthmus bench federation (3 clusters, one process, loopback)")
    for column in ("measure", "value", "goal"):
        table.add_column(column)
    p = results["propagation"]
    table.add_row("change propagation p50", f"{p['p50_ms']} ms", "")
    table.add_row("change propagation p99", f"{p['p99_ms']} ms", f"<= {GOAL_P99_MS:g} ms")
    r = results["resync"]
    table.add_row(f"resync of {r['endpoints']} imported endpoints", f"{r['seconds_from_restart']} s",
                  f"<= {GOAL_RESYNC_S:g} s")  # fmt: skip
    table.add_row("  missing / unexpected / duplicated", f"{r['missing']} / {r['unexpected']} / {r['duplicated']}", "0 / 0 / 0")
    if "memory" in results:
        m = results["memory"]
        table.add_row(f"memory for {m['imported_endpoints']} imported endpoints",
                      f"{m['rss_growth_mb']} MB ({m['bytes_per_endpoint']} B each)", "")  # fmt: skip
        table.add_row("  import time", f"{m['import_seconds']} s", "")
    Console().print(table)
    path = write_results(args.out, {"benchmark": "federation", "backend": args.backend, "results": results})
    print(f"results written to {path}")
    return 0
